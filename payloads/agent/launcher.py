"""periscope's side of the injection: the bootstrap and launcher scripts, the program that
precompiles them for the target's version, and the injected script built from them and the
assembled agent. Not part of the agent: it runs in periscope only."""

BOOTSTRAP = r'''
def _periscope_bootstrap(config, source, code, offered):
    # code: the agent module's code object, or None to compile the text ``source()`` returns
    # (and offered: whether precompiled code came with the script and was turned down).
    import sys
    name = "_periscope_agent"
    directory = config["directory"]
    # The agent's own frames are known by their code objects: this one's and the launcher's. The
    # launcher script's own code holds the token among its constants: only its id is kept, for
    # the first frame (built while this thread may still be in it).
    config["own_codes"] = [sys._getframe(0).f_code]
    try:
        config["own_codes"].append(sys._getframe(1).f_code)
        config["launcher_code_id"] = id(sys._getframe(2).f_code)
    except ValueError:
        pass

    def mark(filename, text):
        # The only channel back to periscope before the socket exists.
        import os
        try:
            fd = os.open(directory + "/" + filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, text.encode("utf-8", "backslashreplace"))
            finally:
                os.close(fd)
        except OSError:
            pass

    short = config.get("start_interval", 0.0005)  # what periscope wrote over the interval, and what the agent sets
    try:
        not_after = config.get("not_after")
        if not_after is not None and __import__("time").time() > not_after:
            # periscope stopped waiting long ago (killed before it could withdraw the request):
            # nobody will connect, and the token must not be good for anything any more.
            import os
            for path in (config["script_path"], config.get("code_path"), config.get("source_path"), directory):
                try:
                    if path is not None:
                        (os.rmdir if path == directory else os.unlink)(path)
                except OSError:
                    pass
            outside = config.get("switch_interval")
            if outside is not None and abs(sys.getswitchinterval() - short) < 1e-9:
                sys.setswitchinterval(outside)
            return
        existing = sys.modules.get(name)
        # periscope shortened the switch interval from outside while it waited for this pickup
        # (explorer/switch.py): ``switch_interval`` is the target's own, to give back as ours.
        outside = config.get("switch_interval")
        if outside is not None and abs(sys.getswitchinterval() - short) < 1e-9:
            if config.get("fast_start") and existing is None:
                config["restore_switch_interval"] = [outside, sys.getswitchinterval()]
            else:
                sys.setswitchinterval(outside)
        elif config.get("fast_start") and existing is None:
            # Start-up takes a dozen GIL handovers; on a target whose threads all compute, each
            # waits up to a switch interval per busy thread. A short interval until the first
            # frame is out makes attach several times faster; the agent puts it back. (First
            # thing: the unlink below already hands the GIL over.)
            before = sys.getswitchinterval()
            if before > short:
                sys.setswitchinterval(short)
                config["restore_switch_interval"] = [before, sys.getswitchinterval()]
        for path in (config["script_path"], config.get("code_path"), None if code is None else config.get("source_path")):
            try:
                if path is not None:
                    __import__("os").unlink(path)
            except OSError:
                pass
        if offered and code is None:
            mark("code-rejected", "the precompiled agent is for another interpreter build")
        if existing is not None and type(existing) is type(sys) and existing.__dict__.get("directory") == directory:
            return  # this very script, picked up by a second thread as well: the first run is the agent
        if existing is not None:
            alive = getattr(existing, "agent_alive", None)
            if alive is None or alive():
                mark("busy", "another periscope agent is attached to this process")
                return
        module = type(sys)(name)
        module.directory = directory
        if existing is None:
            other = sys.modules.setdefault(name, module)
            if other is not module:
                if type(other) is type(sys) and other.__dict__.get("directory") == directory:
                    return  # this very script, run twice: the other run is the agent
                mark("busy", "another periscope agent is starting in this process")
                return
        else:
            sys.modules[name] = module  # the entry of an agent that died: take its place

        def give_up(error):
            mark("failed", "%s: %s" % (type(error).__name__, error))
            if sys.modules.get(name) is module:
                del sys.modules[name]
            saved = config.pop("restore_switch_interval", None)
            if saved is not None and sys.getswitchinterval() == saved[1]:
                sys.setswitchinterval(saved[0])

        if code is not None:
            # About a millisecond in this thread: the agent is listening when it returns, and its
            # worker and its own thread are started (start() in the agent).
            config["code"] = "precompiled"
            try:
                exec(code, module.__dict__)
                module.__dict__["start"](config, module)
            except BaseException as error:
                give_up(error)
            return

        def run():
            # Compiling takes about 15 ms: in the agent's own thread, so this one goes on at once.
            try:
                config["code"] = "compiled"
                try:
                    text = source()
                finally:
                    try:
                        __import__("os").unlink(config["source_path"])
                    except (OSError, KeyError):
                        pass
                exec(compile(text, "<periscope-agent>", "exec"), module.__dict__)
                text = None
                module.__dict__["start"](config, module, False)
            except BaseException as error:
                give_up(error)

        # A fresh _thread (gevent and eventlet patch the imported one to start greenlets).
        import _imp
        spec = type("Spec", (), {"name": "_thread", "origin": "built-in"})()
        if "_thread" in sys.builtin_module_names:
            fresh = _imp.create_builtin(spec)
            _imp.exec_builtin(fresh)
        else:
            import _thread as fresh
        fresh.start_new_thread(run, ())
    except BaseException as error:
        mark("failed", "%s: %s" % (type(error).__name__, error))
'''

# The only code the target compiles (with PyRun_String) in the thread that picks the script up:
# it loads the precompiled bootstrap and agent when the magic number and cache tag are the
# target's own (marshal data is valid for those only), and compiles the bootstrap otherwise.
LAUNCHER = r'''
def _periscope_launch(config, bootstrap, shipped):
    import sys

    def read(path):
        # A file periscope left beside the script, read as the script itself was: through
        # io.open_code, so that an open-code hook of the target judges it as it judged the script.
        with __import__("io").open_code(path) as handle:
            return handle.read()

    try:
        code = None
        if shipped is not None:
            external = sys.modules.get("_frozen_importlib_external")
            if getattr(external, "MAGIC_NUMBER", None) == shipped[0] and sys.implementation.cache_tag == shipped[1]:
                code = __import__("marshal").loads(read(config["code_path"]))
        namespace = {}
        exec(code[0] if code else compile(bootstrap, "<periscope-bootstrap>", "exec"), namespace)
    except BaseException as error:
        try:
            import os
            fd = os.open(config["directory"] + "/failed", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, ("%s: %s" % (type(error).__name__, error)).encode("utf-8", "backslashreplace"))
            os.close(fd)
        except OSError:
            pass
        return
    namespace["_periscope_bootstrap"](
        config, lambda: read(config["source_path"]).decode("utf-8"), code[1] if code else None, shipped is not None
    )


_periscope_launch(_PERISCOPE_CONFIG, _PERISCOPE_BOOTSTRAP, _PERISCOPE_CODE)
'''

# Run by periscope with an interpreter of the target's version (``python -I -S -c``, stdin from
# compile_input) to compile the bootstrap and the agent ahead of time, for build_script's ``code``.
COMPILE_PROGRAM = r'''
import importlib.util, marshal, sys
data = sys.stdin.buffer.read()
size, _, rest = data.partition(b"\n")
bootstrap, source = rest[: int(size)].decode("utf-8"), rest[int(size) :].decode("utf-8")
code = (
    compile(bootstrap, "<periscope-bootstrap>", "exec", dont_inherit=True),
    compile(source, "<periscope-agent>", "exec", dont_inherit=True),
)
head = "%s %s %d\n" % (importlib.util.MAGIC_NUMBER.hex(), sys.implementation.cache_tag, sys.hexversion)
sys.stdout.buffer.write(head.encode() + marshal.dumps(code))
'''


def compile_input(source):
    """stdin for COMPILE_PROGRAM: the bootstrap and the agent ``source``."""
    bootstrap = BOOTSTRAP.encode("utf-8")
    return b"%d\n" % len(bootstrap) + bootstrap + source.encode("utf-8")


def build_script(config, code=None):
    """The text of the injected script: the config and the bootstrap as literals, and LAUNCHER.

    ``config`` holds plain data only (str, int, float, bool, None, lists and dicts of them), with
    ``code_path`` and ``source_path``: where periscope leaves, beside the script, the marshal data
    of ``code`` and the agent's source. ``code`` is ``(magic, cache_tag, marshal_data)``,
    COMPILE_PROGRAM's output from an interpreter of the target's version, or None. The target
    compiles only this short script: it loads the marshal data when magic and tag are its own;
    otherwise it compiles the bootstrap, which compiles the source in the agent's own thread.
    Neither big blob is a literal the target has to parse (that was 586 KB, a few milliseconds of
    the target's thread at every attach).
    """
    shipped = None if code is None else (bytes(code[0]), str(code[1]))
    return "# periscope agent (generated; deleted as soon as the target reads it)\n_PERISCOPE_CONFIG = %r\n%s" % (
        config,
        _script_body(shipped),
    )


_bodies = {}


def _script_body(shipped):
    """Everything in the script after the config (the same for every attach: kept for the next one)."""
    body = _bodies.get(shipped)
    if body is None:
        body = "_PERISCOPE_BOOTSTRAP = %r\n_PERISCOPE_CODE = %r\n%s" % (BOOTSTRAP, shipped, LAUNCHER)
        _bodies.clear()
        _bodies[shipped] = body
    return body
