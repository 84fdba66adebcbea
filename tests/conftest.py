"""Shared by every test folder: this folder is on sys.path (pytest puts a conftest's folder
there), so the test modules of subfolders import the helpers kept here (user_export)."""
