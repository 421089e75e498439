import torch
from sklearn.datasets import load_wine


def splits(seed: int = 0):
    x, y = load_wine(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x = (x - x[order[:106]].mean(0)) / x[order[:106]].std(0)  # statistics of train only
    train, val, test = order[:106], order[106:142], order[142:]
    return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}
