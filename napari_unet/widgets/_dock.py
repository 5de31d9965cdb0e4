"""The container every dock of the plugin is built on: it scrolls, and it folds what most users
never change.

napari docks a magicgui widget's ``native``. For these docks that is a scroll area around the
controls, so a tall dock scrolls instead of growing napari's window: the four docks together fit
a 1080-px screen (``tests/widgets/test_dock_layout.py``). Settings with good defaults go in a
collapsed section (:meth:`DockContainer.add_section`).
"""

from __future__ import annotations

from magicgui.widgets import Container
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QWidget
from superqt import QCollapsible


def wrap(label) -> None:
    """A magicgui Label whose long text wraps at the dock's width instead of widening the dock."""
    from qtpy.QtWidgets import QSizePolicy

    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)


class _FitWidth(QObject):
    """Keeps a scroll area at least as wide as its content's minimum plus a vertical scroll bar,
    whenever the content's layout changes (a longer text, a section unfolded)."""

    def __init__(self, scroll):
        super().__init__(scroll)
        self._scroll = scroll

    def update(self):
        scroll = self._scroll
        bar = scroll.verticalScrollBar().sizeHint().width()
        scroll.setMinimumWidth(scroll.widget().minimumSizeHint().width() + bar + 2 * scroll.frameWidth())

    def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.LayoutRequest:
            self.update()
        return False


class DockContainer(Container):
    """A labelled magicgui container in a vertical scroll area."""

    def __init__(self, **kwargs):
        super().__init__(labels=True, scrollable=True, **kwargs)
        self.sections: dict[str, QCollapsible] = {}

    @property
    def native(self):
        """The scroll area (what napari docks, and what is destroyed with the dock)."""
        return self.root_native_widget

    @property
    def controls(self) -> QWidget:
        """The widget inside the scroll area that holds the controls' layout."""
        return self.root_native_widget.widget()

    def add_qt(self, widget: QWidget) -> None:
        """Append a plain Qt widget (a chart, a table) below the controls added so far."""
        self.controls.layout().addWidget(widget)

    def add_section(self, title: str, widgets, expanded: bool = False) -> Container:
        """Append a collapsible section (collapsed unless ``expanded``) holding ``widgets``, with
        their labels; returns its container (its widgets stay attributes of the dock)."""
        box = Container(widgets=list(widgets), labels=True)
        box.margins = (0, 0, 0, 0)
        section = QCollapsible(title)
        section.addWidget(box.native)
        if expanded:
            section.expand(animate=False)
        self.sections[title] = section
        self.add_qt(section)
        return box

    def finish_layout(self) -> None:
        """Call after the last control: spare height goes below the controls, not between them,
        and the dock is never narrower than its controls (it scrolls vertically only)."""
        self.controls.layout().addStretch(1)
        self._fit_width = _FitWidth(self.root_native_widget)
        self.controls.installEventFilter(self._fit_width)
        self._fit_width.update()


class _SharedFolder:
    """One training-set folder for every dock of the process: choosing it in Correct chooses it
    in Fine-tune (and back). A field leaves the group when its Qt widget is destroyed."""

    def __init__(self):
        from pathlib import Path

        self.value = str(Path.home() / "napari-unet-training")
        self.fields: dict[int, object] = {}  # id -> weak reference to a live field

    def field(self, **kwargs):
        import weakref

        from magicgui.widgets import FileEdit

        field = FileEdit(label="Training set", mode="d", value=self.value, **kwargs)
        key = id(field)
        self.fields[key] = weakref.ref(field)
        field.native.destroyed.connect(lambda *_: self.fields.pop(key, None))
        field.changed.connect(self._changed)
        return field

    def _changed(self, value):
        text = str(value)
        if text == self.value:
            return
        self.value = text
        for key, ref in list(self.fields.items()):
            other = ref()
            if other is None:
                self.fields.pop(key, None)
                continue
            try:
                if str(other.value) != text:
                    other.value = text
            except RuntimeError:  # its Qt widget is already gone
                self.fields.pop(key, None)


TRAINING_FOLDER = _SharedFolder()
