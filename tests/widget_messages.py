"""Simulated front-end messages for the browser-free dashboard tests."""


def frontend_update(widget, **state):
    """What the browser sends when the user moves a widget."""
    widget._handle_msg(
        {
            "content": {"data": {"method": "update", "state": state, "buffer_paths": []}},
            "buffers": [],
        }
    )
