"""Jobs: spec, Ray execution, job store, CLI, REST API and web page."""
