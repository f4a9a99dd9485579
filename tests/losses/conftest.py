from tests.model.conftest import _one_thread  # noqa: F401  (same autouse fixture for the loss tests)
