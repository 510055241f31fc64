"""Testing Oblix plugins: the contract suites every part must pass, and test doubles.

* :class:`SessionStoreContract` -- the suite every session store runs (subclass it, give it a
  ``store`` fixture, and ``damage_session`` for the corruption tests);
* :class:`ModelBackendContract` -- the suite every model backend runs;
* :class:`AgentContract` -- the suite every monitoring agent runs;
* :class:`EmbedderContract`, :class:`DocumentIndexContract`, :class:`DocumentReaderContract` --
  the suites every embedder, document index and document reader runs;
* :class:`ScriptedBackend`, :class:`ScriptedPlugin`, :class:`Step` -- a *test double* model
  backend that answers from a script (for routing, middleware and command tests; not a model).

::

    from oblix.testing import SessionStoreContract

    class TestMyStore(SessionStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(root=tmp_path)

The suites' async tests use anyio's pytest plugin (``@pytest.mark.anyio``). This is the
public home of what ``oblix_core.testing`` holds (that name keeps working).
"""

from oblix_core.testing import (
    AgentContract,
    DocumentIndexContract,
    DocumentReaderContract,
    EmbedderContract,
    ModelBackendContract,
    ScriptedBackend,
    ScriptedPlugin,
    SessionStoreContract,
    Step,
)

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
