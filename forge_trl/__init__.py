"""forge_trl: Hydra-composed post-training runs (pretrain, SFT, DPO, ORPO, RM) on Hugging Face TRL."""

__version__ = "0.1.0"
