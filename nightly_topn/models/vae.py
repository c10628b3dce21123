"""Multinomial variational autoencoder (Mult-VAE, Liang et al. 2018) in torch, CPU only.

Why this model: on dense explicit-feedback data such as MovieLens it models each user's whole
history jointly (a softmax over the catalogue), which is where it matches or beats the linear
item-item models; it folds in any user from the history row (the encoder *is* the fold-in).

Training: L2-normalised, dropout-corrupted history (weighted by the ``confidence`` knob; every
positive is a target of the likelihood) → encoder (tanh) → Gaussian latent →
decoder → multinomial log-likelihood, KL annealed up to ``beta``. Scoring uses the latent mean:
the same network (``_network()``) in eval mode under ``torch.inference_mode``. Each member's
``state_dict`` is saved as plain arrays (npz, ``m0.enc1.weight``, ...) and loaded back into that
network, so loading never unpickles anything. Same data + same params (incl. ``seed``) = same lists.
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

from nightly_topn.models.base import (Recommender, align_history, binarize, load_states, state_arrays, torch_rows,
                                      torch_scores, torch_threads)
from nightly_topn.models.confidence import check_scheme, weigh


@functools.cache
def _network():
    """The ``nn.Module`` class, defined on first use: importing this file must not import torch
    (Airflow parses the DAGs, Beam pickles the DoFns)."""
    import torch
    from torch import nn

    class MultVAENet(nn.Module):
        """Encoder (tanh) → mean and log-variance of the latent → decoder (tanh) → item logits.
        The first layer is linear on the sparse history (``torch_rows``): an embedding bag + bias."""

        def __init__(self, n_items: int, hidden: int, latent: int, dropout: float):
            super().__init__()
            self.latent = latent
            self.enc1, self.enc1_bias = nn.EmbeddingBag(n_items, hidden, mode="sum"), nn.Parameter(torch.empty(hidden))
            self.enc2 = nn.Linear(hidden, 2 * latent)
            self.dec1, self.dec2 = nn.Linear(latent, hidden), nn.Linear(hidden, n_items)
            self.drop = nn.Dropout(dropout)
            for weight, bias in ((self.enc1.weight, self.enc1_bias), (self.enc2.weight, self.enc2.bias),
                                 (self.dec1.weight, self.dec1.bias), (self.dec2.weight, self.dec2.bias)):
                nn.init.xavier_uniform_(weight)
                nn.init.normal_(bias, std=0.001)

        def forward(self, history, generator=None):
            """``(logits, mu, logvar)`` for ``history`` rows (``torch_rows``); training drops input
            and samples the latent (noise from ``generator``), eval decodes the mean."""
            items, offsets, weights = history
            h = torch.tanh(self.enc1(items, offsets, per_sample_weights=self.drop(weights)) + self.enc1_bias)
            stats = self.enc2(h)
            mu, logvar = stats[:, :self.latent], stats[:, self.latent:]
            z = mu
            if self.training:
                std = torch.exp(0.5 * logvar)
                z = mu + std * torch.randn(std.shape, generator=generator)
            return self.dec2(torch.tanh(self.dec1(z))), mu, logvar

    return MultVAENet


class MultVAE(Recommender):
    name = "multvae"

    def __init__(self, hidden: int = 600, latent: int = 200, dropout: float = 0.5, beta: float = 0.2,
                 anneal_epochs: int = 20, epochs: int = 60, batch_size: int = 128, lr: float = 1e-3,
                 weight_decay: float = 0.0, ensemble: int = 1, confidence: str = "binary", seed: int = 42, **extra):
        super().__init__(hidden=hidden, latent=latent, dropout=dropout, beta=beta, anneal_epochs=anneal_epochs,
                         epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         ensemble=ensemble, confidence=check_scheme(confidence), seed=seed, **extra)

    def _net(self, n_items: int):
        p = self.params
        return _network()(n_items, int(p["hidden"]), int(p["latent"]), float(p["dropout"]))

    # -- training ------------------------------------------------------------------------------
    def _train_one(self, X: sp.csr_matrix, seed: int):
        import torch

        torch.set_num_threads(torch_threads())
        p = self.params
        torch.manual_seed(seed)
        net = self._net(X.shape[1]).train()
        opt = torch.optim.Adam(net.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
        gen = torch.Generator().manual_seed(seed)
        batch, epochs = int(p["batch_size"]), int(p["epochs"])
        anneal = max(int(p["anneal_epochs"]), 1)
        rows = torch.from_numpy(np.flatnonzero(np.diff(X.indptr) > 0))
        for epoch in range(epochs):
            beta = float(p["beta"]) * min(1.0, (epoch + 1) / anneal)
            order = rows[torch.randperm(len(rows), generator=gen)]
            for lo in range(0, len(order), batch):
                x = X[order[lo:lo + batch].numpy()]
                logits, mu, logvar = net(torch_rows(x), gen)
                target = torch.from_numpy(binarize(x).toarray())  # weighted input, every positive a target
                nll = -(torch.log_softmax(logits, dim=1) * target).sum(dim=1).mean()
                kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
                loss = nll + beta * kl
                opt.zero_grad()
                loss.backward()
                opt.step()
                if self._stop_here(epoch + min(lo + batch, len(order)) / len(order), epochs, "epochs"):  # the search's deadline
                    break
            if self.stopped_early:
                break
        return net.eval()

    def fit(self, interactions: sp.csr_matrix, times: sp.csr_matrix | None = None) -> "MultVAE":
        X = weigh(interactions, self.params["confidence"])
        if X.nnz == 0:
            raise ValueError("MultVAE cannot train on an empty interaction matrix")
        seed = int(self.params["seed"])
        self.stopped_early = None
        self.members = [self._train_one(X, seed + 1000 * m) for m in range(max(int(self.params["ensemble"]), 1))]
        self.known = np.diff(X.indptr) > 0
        self.n_users, self.n_items = X.shape
        return self

    # -- scoring (the encoder is the fold-in): mean of the members' log-softmax ------------------
    def score(self, users, history):
        import torch

        h = weigh(align_history(history, self.n_items), self.params["confidence"])

        def block(lo, hi):
            x = torch_rows(h[lo:hi])
            total = torch.log_softmax(self.members[0](x)[0], dim=1)
            for net in self.members[1:]:
                total += torch.log_softmax(net(x)[0], dim=1)
            return total / len(self.members)

        return torch_scores(self.members, h.shape[0], self.n_items, block)

    def _arrays(self):
        return {"known": self.known, "members": np.asarray(len(self.members)), **state_arrays(self.members)}

    def _restore(self, arrays):
        self.known = arrays["known"].astype(bool)
        self.members = [self._net(self.n_items) for _ in range(int(arrays["members"]))]
        load_states(self.members, arrays)
