// ionscreen /docs: starts the vendored Swagger UI (a file, not an inline script, so the pages' CSP allows it).
(function () {
  "use strict";
  var host = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: host.getAttribute("data-openapi-url"),
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
})();
