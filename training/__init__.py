"""DFT data ingestion, CP2K labelling, MACE training and fine-tuning, and the MLflow model registry."""
