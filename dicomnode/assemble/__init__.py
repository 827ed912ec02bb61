"""Series/study assembly and completion (quiet period, content evidence, restart-safe timers)."""

from dicomnode.assemble.assembler import Assembler, QuietResolver
from dicomnode.assemble.evidence import InstanceFacts, content_evidence

__all__ = ["Assembler", "InstanceFacts", "QuietResolver", "content_evidence"]
