"""The bundled demo model's data: configuration generator (make_configs) and data card (data_card)."""
