"""The console's pages: one FastAPI router per page group, included by ``dicomnode.console.app.create_app``.

Each router's ``tags`` name its group: the title of the error page a refused request gets.
"""
