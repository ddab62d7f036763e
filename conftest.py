"""Doctest namespace: the examples in mdrec's docstrings may use ``torch`` and ``np`` without importing them."""

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict) -> None:
    doctest_namespace.update(torch=torch, np=np)
