"""The one-command demo: a small real screen of Li–P–S–Cl electrolytes with the bundled model."""
