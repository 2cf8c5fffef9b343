"""Helpers the tests share: one builder of config files, and clients of the admin API and of
echo backends. (Process and socket helpers are in conftest.py.)"""
