"""The periscope agent: the parts of the script periscope injects into a target (see assembly and
base), and periscope's own side of the injection (launcher).

periscope and the tests import it for the injection, the codec and the limits; importing it
starts nothing and runs nothing of the agent.
"""

from .assembly import PARTS, AssemblyError, agent_source, assemble
from .launcher import BOOTSTRAP, COMPILE_PROGRAM, LAUNCHER, build_script, compile_input

# The parts that periscope itself uses only in the tests and the benchmarks (the codec, the limits,
# the delta baseline) load when first asked for: an attach needs only the two modules above.
_LAZY = {
    "MODULE_NAME": "base", "PROTOCOL_VERSION": "base",
    "DecodeError": "codec", "Encoded": "codec", "EncodeError": "codec", "StreamDecoder": "codec", "decode": "codec", "encode": "codec",
    "DEFAULT_LIMITS": "previews", "Baseline": "previews",
}


def __getattr__(name: str) -> object:
    part = _LAZY.get(name)
    if part is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{part}"), name)
    globals()[name] = value
    return value

__all__ = [
    "BOOTSTRAP", "COMPILE_PROGRAM", "DEFAULT_LIMITS", "LAUNCHER", "MODULE_NAME", "PARTS", "PROTOCOL_VERSION", "AssemblyError",
    "Baseline", "DecodeError", "EncodeError", "Encoded", "StreamDecoder", "agent_source", "assemble", "build_script",
    "compile_input", "decode", "encode",
]
