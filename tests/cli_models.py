"""A tiny LightningModule and DataModule that the CLI tests select by class_path."""

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class TinyRegression(pl.LightningModule):
    """y = 3x - 1 fitted by one linear layer. `fail_at`: "fit_start" or "step2" raises a ValueError
    there (tests/test_cli_errors.py: a failed start against a failure mid-run)."""

    def __init__(self, lr: float = 0.1, fail_at: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(1, 1)

    def on_fit_start(self) -> None:
        if self.hparams.fail_at == "fit_start":
            raise ValueError("model.fail_at: failing at fit start as asked")

    def training_step(self, batch, batch_idx):
        if self.hparams.fail_at == "step2" and self.global_step == 2:
            raise ValueError("model.fail_at: failing at step 2 as asked")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class TinyData(pl.LightningDataModule):
    def __init__(self, n: int = 64, batch_size: int = 8) -> None:
        super().__init__()
        self.n = n
        self.batch_size = batch_size

    def train_dataloader(self):
        x = torch.linspace(-1, 1, self.n).unsqueeze(1)
        return DataLoader(TensorDataset(x, 3 * x - 1), batch_size=self.batch_size, shuffle=True)
