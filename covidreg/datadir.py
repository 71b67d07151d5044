"""Where the commands find the HW01 files by default: the data directory and each edition's
file names. Standard library only, so the config can resolve its paths without loading numpy.
"""

from __future__ import annotations

import os
from pathlib import Path

from covidreg.errors import CovidRegError

#: The data directory when set, else ``data/`` (of the working directory).
DATA_DIR_ENV = "COVIDREG_DATA_DIR"
AUTO = "auto"
#: Each edition's training and test file names (2023 spells them with an underscore).
FILE_NAMES: dict[str, tuple[str, str]] = {
    "2021": ("covid.train.csv", "covid.test.csv"),
    "2022": ("covid.train.csv", "covid.test.csv"),
    "2023": ("covid_train.csv", "covid_test.csv"),
}
EDITION_NAMES = tuple(FILE_NAMES)


def data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def default_paths(edition: str = AUTO) -> tuple[str, str]:
    """The training and test files in the data directory: ``edition``'s, or (auto) whichever
    edition's files are there (2021's names when none is)."""
    folder = data_dir()
    if edition != AUTO:
        train, test = FILE_NAMES[edition]
        return str(folder / train), str(folder / test)
    present = sorted({names for names in FILE_NAMES.values() if (folder / names[0]).is_file()})
    if len(present) > 1:
        found = " and ".join(folder.joinpath(names[0]).as_posix() for names in present)
        raise CovidRegError(
            f"the data directory {folder} holds the files of two editions ({found}); pass "
            "--edition 2021, 2022 or 2023, or the files with --train-csv and --test-csv"
        )
    train, test = present[0] if present else FILE_NAMES["2021"]
    return str(folder / train), str(folder / test)


def resolve_paths(train_csv: str, test_csv: str, edition: str = AUTO) -> tuple[str, str]:
    """``train_csv`` and ``test_csv`` with ``auto`` replaced: both auto, the data directory's
    files; a training file given, the test file beside it (covid.train.csv -> covid.test.csv,
    covid_train.csv -> covid_test.csv)."""
    if AUTO not in (train_csv, test_csv):
        return train_csv, test_csv
    if train_csv == AUTO:
        train, test = default_paths(edition)
        return train, (test if test_csv == AUTO else test_csv)
    given = Path(train_csv)
    beside = given.name.replace("train", "test") if "train" in given.name else FILE_NAMES["2021"][1]
    return train_csv, str(given.with_name(beside))
