"""Attacking certificates: `pgd` searches decision changes, `command` runs `lipcert attack`."""

from lipcert.attack.pgd import Attacker, AttackResult, AttackSettings

__all__ = ["AttackResult", "AttackSettings", "Attacker"]
