"""covidreg from Python: train, cross-validate, load a run and write a submission."""

from pathlib import Path

import covidreg
from covidreg.datadir import default_paths

# the data directory's files ($COVIDREG_DATA_DIR, else data/), of whichever edition is there,
# as the commands find them
train_csv, test_csv = default_paths()

result = covidreg.train(lr=1e-3, hidden=[16], quiet=True)  # covidreg train --lr 1e-3 --hidden 16
print(result)
print(result.history.tail(3))  # history.csv: epoch, train_loss, valid_loss, lr
print(result.metrics["network_valid_rmse"])  # metrics.json
print(result.predict(test_csv)[:3])  # pred.csv's numbers

folds = covidreg.cv(folds=5, quiet=True)  # covidreg cv --folds 5
print(folds)
print(folds.fold_rmse, folds.mean, folds.std)  # summary.json
print(folds.folds[["fold", "valid_rmse", "network_rmse"]])  # cv.csv

model = covidreg.load(result.run_dir)  # a model.pt, a train run, or a cv run (fold ensemble)
frame = covidreg.read_hw01(test_csv)  # validated; named by day: cli_d1 ... tested_positive_d2
print(covidreg.layout_of(frame).describe())  # the edition the file is of
print(covidreg.predict(model, frame)[:3])
covidreg.submission(model, frame).to_csv("pred.csv", index=False)  # Kaggle id,tested_positive
print(Path("pred.csv").read_text().splitlines()[:3])
