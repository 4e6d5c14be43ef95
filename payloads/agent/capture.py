"""The print output of evals: sys.stdout and sys.stderr routed by thread while evals run."""

from .base import _thread  # agent-part


class StreamRouter:
    """Stands in for sys.stdout/sys.stderr: writes from eval threads go to periscope, all others
    go to the stream the target had."""

    def __init__(self, agent, name, original):
        self._agent = agent
        self._name = name
        self._original = original

    def write(self, text):
        agent = self._agent
        capture = agent.captures.get(_thread.get_ident()) if agent is not None else None
        if capture is not None:
            written = capture.write(self._name, text)
            agent.wake()  # the loop sends it at once
            return written
        if self._original is None:
            return len(text)  # the target had no stream here: its print() wrote nothing, and still does
        return self._original.write(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        if self._original is not None and (self._agent is None or self._agent.captures.get(_thread.get_ident()) is None):
            return self._original.flush()
        return None

    def __getattr__(self, name):
        return getattr(self._original, name)


class Capture:
    """Print output of one eval, waiting to be sent."""

    def __init__(self, eval_id, limit):
        self.eval_id = eval_id
        self.limit = limit
        self.chunks = []
        self.size = 0
        self.dropped = 0
        self.lock = _thread.allocate_lock()

    def write(self, stream, text):
        if type(text) is not str:
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        with self.lock:
            if self.size + len(text) > self.limit:
                self.dropped += len(text)
            else:
                self.size += len(text)
                self.chunks.append((stream, text))
        return len(text)

    def take(self):
        with self.lock:
            chunks, self.chunks = self.chunks, []
            return chunks
