"""Multinomial variational autoencoder (Mult-VAE, Liang et al. 2018) in torch, CPU only.

Why this model: on dense explicit-feedback data such as MovieLens it models each user's whole
history jointly (a softmax over the catalogue), which is where it matches or beats the linear
item-item models; it folds in any user from the history row (the encoder *is* the fold-in).

Training: L2-normalised, dropout-corrupted history → encoder (tanh) → Gaussian latent →
decoder → multinomial log-likelihood, KL annealed up to ``beta``. Scoring uses the latent mean.
The learned weights are saved as plain arrays (npz), restored into numpy for scoring, so
loading never unpickles anything. Same data + same params (incl. ``seed``) = same lists.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from nightly_topn.models.base import Recommender, align_history, binarize, torch_threads



def _torch():
    import torch

    torch.set_num_threads(torch_threads())
    return torch


class MultVAE(Recommender):
    name = "multvae"

    def __init__(self, hidden: int = 600, latent: int = 200, dropout: float = 0.5, beta: float = 0.2,
                 anneal_epochs: int = 20, epochs: int = 60, batch_size: int = 128, lr: float = 1e-3,
                 weight_decay: float = 0.0, ensemble: int = 1, seed: int = 42, **extra):
        super().__init__(hidden=hidden, latent=latent, dropout=dropout, beta=beta, anneal_epochs=anneal_epochs,
                         epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         ensemble=ensemble, seed=seed, **extra)

    # -- training ------------------------------------------------------------------------------
    def _train_one(self, X: sp.csr_matrix, seed: int) -> dict[str, np.ndarray]:
        torch = _torch()
        nn = torch.nn
        p = self.params
        torch.manual_seed(seed)
        n_users, n_items = X.shape
        hidden, latent = int(p["hidden"]), int(p["latent"])
        enc1, enc2 = nn.Linear(n_items, hidden), nn.Linear(hidden, 2 * latent)
        dec1, dec2 = nn.Linear(latent, hidden), nn.Linear(hidden, n_items)
        for layer in (enc1, enc2, dec1, dec2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=0.001)
        params = [q for layer in (enc1, enc2, dec1, dec2) for q in layer.parameters()]
        opt = torch.optim.Adam(params, lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
        gen = torch.Generator().manual_seed(seed)
        dense = torch.from_numpy(X.toarray().astype(np.float32))
        drop = nn.Dropout(float(p["dropout"]))
        batch, epochs = int(p["batch_size"]), int(p["epochs"])
        anneal = max(int(p["anneal_epochs"]), 1)
        rows = torch.from_numpy(np.flatnonzero(np.diff(X.indptr) > 0))
        for epoch in range(epochs):
            beta = float(p["beta"]) * min(1.0, (epoch + 1) / anneal)
            order = rows[torch.randperm(len(rows), generator=gen)]
            for lo in range(0, len(order), batch):
                x = dense[order[lo:lo + batch]]
                h = nn.functional.normalize(x, dim=1)
                h = drop(h)
                stats = enc2(torch.tanh(enc1(h)))
                mu, logvar = stats[:, :latent], stats[:, latent:]
                std = torch.exp(0.5 * logvar)
                z = mu + std * torch.randn(std.shape, generator=gen)
                logits = dec2(torch.tanh(dec1(z)))
                nll = -(torch.log_softmax(logits, dim=1) * x).sum(dim=1).mean()
                kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
                loss = nll + beta * kl
                opt.zero_grad()
                loss.backward()
                opt.step()
        return {"enc1_w": enc1.weight.detach().numpy().T.copy(), "enc1_b": enc1.bias.detach().numpy().copy(),
                "enc2_w": enc2.weight.detach().numpy()[:latent].T.copy(), "enc2_b": enc2.bias.detach().numpy()[:latent].copy(),
                "dec1_w": dec1.weight.detach().numpy().T.copy(), "dec1_b": dec1.bias.detach().numpy().copy(),
                "dec2_w": dec2.weight.detach().numpy().T.copy(), "dec2_b": dec2.bias.detach().numpy().copy()}

    def fit(self, interactions: sp.csr_matrix, times: sp.csr_matrix | None = None) -> "MultVAE":
        X = binarize(interactions)
        if X.nnz == 0:
            raise ValueError("MultVAE cannot train on an empty interaction matrix")
        seed = int(self.params["seed"])
        self.members = [self._train_one(X, seed + 1000 * m) for m in range(max(int(self.params["ensemble"]), 1))]
        self.known = np.diff(X.indptr) > 0
        self.n_users, self.n_items = X.shape
        return self

    # -- scoring (numpy; the encoder is the fold-in) ---------------------------------------------
    def score(self, users, history):
        h = binarize(align_history(history, self.n_items))
        norms = np.sqrt(np.asarray(h.sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        h = sp.diags(1.0 / norms) @ h
        total = np.zeros((h.shape[0], self.n_items), dtype=np.float32)
        for w in self.members:
            mu = np.tanh(h @ w["enc1_w"] + w["enc1_b"]) @ w["enc2_w"] + w["enc2_b"]
            logits = np.tanh(mu @ w["dec1_w"] + w["dec1_b"]) @ w["dec2_w"] + w["dec2_b"]
            logits -= logits.max(axis=1, keepdims=True)
            total += (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)
        return total / len(self.members)

    def _arrays(self):
        out = {"known": self.known, "members": np.asarray(len(self.members))}
        for m, w in enumerate(self.members):
            out.update({f"m{m}_{k}": v.astype(np.float32) for k, v in w.items()})
        return out

    def _restore(self, arrays):
        self.known = arrays["known"].astype(bool)
        n = int(arrays["members"])
        keys = ("enc1_w", "enc1_b", "enc2_w", "enc2_b", "dec1_w", "dec1_b", "dec2_w", "dec2_b")
        self.members = [{k: arrays[f"m{m}_{k}"] for k in keys} for m in range(n)]
