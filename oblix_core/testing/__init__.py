"""Helpers for testing Oblix and Oblix plugins.

* :class:`SessionStoreContract` -- the test suite every session store must pass.
* :class:`ModelBackendContract` -- the test suite every model backend must pass.
* :class:`AgentContract` -- the test suite every monitoring agent must pass.
* :class:`EmbedderContract`, :class:`DocumentIndexContract`, :class:`DocumentReaderContract` --
  the suites every embedder, document index and document reader must pass.
* :class:`ScriptedBackend` / :class:`ScriptedPlugin` -- a *test double* model backend
  that answers from a script (for engine, routing and middleware tests; not a model).

Use a contract from a plugin's own tests with one subclass::

    from oblix.testing import SessionStoreContract

    class TestMyStore(SessionStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(...)

The contracts' async tests use anyio's pytest plugin (``@pytest.mark.anyio``).
"""

from oblix_core.testing.agent_contract import AgentContract
from oblix_core.testing.backend_contract import ModelBackendContract
from oblix_core.testing.documents_contract import (
    DocumentIndexContract,
    DocumentReaderContract,
    EmbedderContract,
)
from oblix_core.testing.scripted import ScriptedBackend, ScriptedPlugin, Step
from oblix_core.testing.store_contract import SessionStoreContract

__all__ = [
    "AgentContract",
    "DocumentIndexContract",
    "DocumentReaderContract",
    "EmbedderContract",
    "ModelBackendContract",
    "ScriptedBackend",
    "ScriptedPlugin",
    "SessionStoreContract",
    "Step",
]
