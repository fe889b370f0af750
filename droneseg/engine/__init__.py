"""Training: the LightningModule, its callbacks and the train entry point."""
