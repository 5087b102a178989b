"""Trainer adapters: TRL, verl (here) and OpenRLHF, slime (served by the service).

Each adapter imports nothing of its trainer: it follows the trainer's calling convention with
plain Python values, so that `pip install assay` is enough on the trainer's side.
"""

from __future__ import annotations

from assay.clients.schema import item_from_label
from assay.clients.trainers.base import NullReward, UnjudgedError, reward_of

__all__ = ["NullReward", "UnjudgedError", "item_from_label", "reward_of"]
