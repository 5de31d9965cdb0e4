"""The container every dock of the plugin is built on: it scrolls, and it folds what most users
never change.

napari docks a magicgui widget's ``native``. For these docks that is a scroll area around the
controls, so a tall dock scrolls instead of growing napari's window: the four docks together fit
a 1080-px screen (``tests/widgets/test_dock_layout.py``). Settings with good defaults go in a
collapsed section (:meth:`DockContainer.add_section`).

When a dock first appears beside others stacked in the same side of the window, the side's height
is shared in proportion to what each dock's controls need (:func:`share_height`): napari gives a
newly added dock five times the height of the one above it, which left Correct (or Segment)
three rows high above Fine-tune.
"""

from __future__ import annotations

from magicgui.widgets import Container
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QDockWidget, QMainWindow, QScrollArea, QWidget
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


def _wanted_height(dock: QDockWidget) -> int:
    """The height ``dock`` needs to show its contents without scrolling (a scroll area's own
    size hint stops at 24 lines of text, so for one the hint of what it scrolls)."""
    inner = dock.widget()
    if inner is None:
        return dock.sizeHint().height()
    scrolled = inner.widget() if isinstance(inner, QScrollArea) else None
    needed = (scrolled if scrolled is not None else inner).sizeHint().height()
    title = dock.sizeHint().height() - inner.sizeHint().height()  # the dock's title bar and margins
    return max(needed, 1) + max(title, 0)


def share_height(dock: QDockWidget) -> bool:
    """Share the height of the window side ``dock`` is docked in among the docks stacked there, in
    proportion to what each needs (:func:`_wanted_height`); docks in tabs count once, as the tab
    shown. Returns False (nothing changed) for a floating dock or one outside a main window."""
    main = dock.parentWidget()
    if not isinstance(main, QMainWindow) or dock.isFloating() or not dock.isVisible():
        return False
    area = main.dockWidgetArea(dock)
    stacked, seen = [], set()
    for other in main.findChildren(QDockWidget):
        if other.isFloating() or not other.isVisible() or main.dockWidgetArea(other) != area or id(other) in seen:
            continue
        seen.update(id(tab) for tab in main.tabifiedDockWidgets(other))
        seen.add(id(other))
        stacked.append(other)
    if len(stacked) < 2 or area not in (Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.RightDockWidgetArea):
        return False
    main.resizeDocks(stacked, [_wanted_height(d) for d in stacked], Qt.Orientation.Vertical)
    return True


class _FirstShow(QObject):
    """Shares the height once, when the dock first shows: napari has placed it by then (its own
    split is set when it adds the dock; the dock shows at the next turn of the event loop). A
    zero-time timer from here did not always fire before the first paint, so it is done at once."""

    def __init__(self, scroll):
        super().__init__(scroll)
        self._scroll = scroll
        self.done = False

    def share(self):
        try:
            dock = self._scroll.parentWidget()
            if isinstance(dock, QDockWidget):
                share_height(dock)
        except RuntimeError:  # the dock was closed before the event loop came back to it
            pass

    def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
        if not self.done and event.type() == QEvent.Type.Show:
            self.done = True
            self.share()
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
        self._first_show = _FirstShow(self.root_native_widget)
        self.root_native_widget.installEventFilter(self._first_show)


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
