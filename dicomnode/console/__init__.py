"""The web console: a small server-rendered FastAPI app for administrators and radiologists.

Pages: Dashboard, Studies (+ study page with actions, results preview), Rules (highlighted set, validator,
tester, atomic editor), Queue. Entry points: :class:`ConsoleNode` (what it reads), :func:`create_app`
(the ASGI app, in ``dicomnode.console.app``) and :class:`ConsoleServer` (the node component, in
``dicomnode.console.server``). FastAPI and matplotlib are imported only when the console is used.
"""

from dicomnode.console.node import ConsoleNode

__all__ = ["ConsoleNode"]
