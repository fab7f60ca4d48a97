"""The PySide6 desktop viewer (issue #6).

This package only displays and delegates: every number and every image it shows comes from the
core packages (``io``, ``inference``, ``explain``, ``batch``, ``report``), and anything slow runs in
:mod:`lunglens.gui.workers`. Import :func:`lunglens.gui.app.run` to start it; importing this
package itself does not import Qt, so ``lunglens --help`` stays fast.
"""
