"""One LightningModule per task family (the builders in `loldu_lightning.builders` make them from a config)."""
