"""Stand-ins for KFP's Artifact/Metrics objects, so component functions run via ``.python_func`` in tests."""


class _Art:
    def __init__(self, path):
        self.path = str(path)
        self.metadata = {}


class _Metrics(_Art):
    def __init__(self, path):
        super().__init__(path)
        self.logged = {}

    def log_metric(self, k, v):
        self.logged[k] = v
