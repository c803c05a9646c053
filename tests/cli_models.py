"""A tiny LightningModule and DataModule that the CLI tests select by class_path."""

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class TinyRegression(pl.LightningModule):
    """y = 3x - 1 fitted by one linear layer."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
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
