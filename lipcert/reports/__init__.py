"""Terminal tables, JSON objects and files written from lipcert's results."""
