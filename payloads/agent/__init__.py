"""The periscope agent: the parts of the script periscope injects into a target (see assembly and
base), and periscope's own side of the injection (launcher).

periscope and the tests import it for the injection, the codec and the limits; importing it
starts nothing and runs nothing of the agent.
"""

from .assembly import PARTS, AssemblyError, agent_source, assemble
from .base import MODULE_NAME, PROTOCOL_VERSION
from .codec import DecodeError, Encoded, EncodeError, StreamDecoder, decode, encode
from .launcher import BOOTSTRAP, COMPILE_PROGRAM, LAUNCHER, build_script, compile_input
from .previews import DEFAULT_LIMITS, Baseline

__all__ = [
    "BOOTSTRAP", "COMPILE_PROGRAM", "DEFAULT_LIMITS", "LAUNCHER", "MODULE_NAME", "PARTS", "PROTOCOL_VERSION", "AssemblyError",
    "Baseline", "DecodeError", "EncodeError", "Encoded", "StreamDecoder", "agent_source", "assemble", "build_script",
    "compile_input", "decode", "encode",
]
