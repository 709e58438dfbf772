"""Tests of the experiment harness (a package so its conftest does not shadow tests/conftest.py)."""
