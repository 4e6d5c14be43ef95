"""periscope's Textual screens: the process list, the attach flow, a process, dialogs and help.

Screens wire widgets (``widgets/``) to the core (``explorer/``); they are the only place besides
``explorer.app`` where both meet.
"""
