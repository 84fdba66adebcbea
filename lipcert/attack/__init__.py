"""Attacking certificates: `pgd` searches decision changes (`lipcert.api.attack` runs it)."""

from lipcert.attack.pgd import Attacker, AttackResult, AttackSettings

__all__ = ["AttackResult", "AttackSettings", "Attacker"]
