"""Control: the one settings state, OSC, the events hub, presets and prompt suggestions, and their routes."""
