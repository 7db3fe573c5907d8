"""Fakes of outside services, real servers on 127.0.0.1 for tests."""
