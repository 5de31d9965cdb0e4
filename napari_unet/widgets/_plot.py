"""A light live chart for the dock: training loss per step and validation score per epoch.

Plain QPainter (no matplotlib): adding a point and repainting costs well under a millisecond,
so the chart never stalls napari while training runs.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor(90, 170, 255)
SCORE_COLOR = QColor(255, 170, 60)
BASE_COLOR = QColor(180, 180, 180)


class LossPlot(QWidget):
    """Loss (left axis, log scale, blue) against step; validation AP@0.5 (right axis 0..1,
    orange dots) against step; the base model's score as a grey dashed line."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.clear()

    def clear(self):
        self.losses: list[tuple[int, float]] = []
        self.scores: list[tuple[int, float]] = []
        self.baseline: float | None = None
        self.update()

    def add_loss(self, step: int, loss: float):
        if math.isfinite(loss) and loss > 0:
            self.losses.append((step, loss))
            self.update()

    def add_score(self, step: int, score: float):
        self.scores.append((step, score))
        self.update()

    def set_baseline(self, score: float | None):
        self.baseline = score
        self.update()

    def paintEvent(self, _event):  # noqa: N802 (Qt's name)
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        rect = QRectF(self.rect()).adjusted(34, 8, -30, -18)
        p.setPen(QPen(QColor(120, 120, 120)))
        p.drawRect(rect)
        font = QFont()
        font.setPointSize(7)
        p.setFont(font)
        last = max([s for s, _ in self.losses] + [s for s, _ in self.scores] + [1])

        def x(step):
            return rect.left() + rect.width() * step / last

        if self.losses:
            logs = [math.log10(v) for _, v in self.losses]
            lo, hi = min(logs), max(logs)
            if hi - lo < 1e-6:
                lo, hi = lo - 0.5, hi + 0.5
            # a running mean keeps the curve readable with noisy per-step losses
            window = max(1, len(logs) // 50)
            smooth = [sum(logs[max(0, i - window + 1): i + 1]) / len(logs[max(0, i - window + 1): i + 1])
                      for i in range(len(logs))]
            poly = QPolygonF([QPointF(x(s), rect.bottom() - rect.height() * (v - lo) / (hi - lo))
                              for (s, _), v in zip(self.losses, smooth)])
            p.setPen(QPen(LOSS_COLOR, 1.5))
            p.drawPolyline(poly)
            p.drawText(QRectF(0, rect.top() - 4, 32, 12), Qt.AlignRight, f"{10 ** hi:.2g}")
            p.drawText(QRectF(0, rect.bottom() - 8, 32, 12), Qt.AlignRight, f"{10 ** lo:.2g}")
        if self.baseline is not None:
            pen = QPen(BASE_COLOR, 1, Qt.DashLine)
            p.setPen(pen)
            y = rect.bottom() - rect.height() * self.baseline
            p.drawLine(QPointF(rect.left(), y), QPointF(rect.right(), y))
        if self.scores:
            p.setPen(QPen(SCORE_COLOR, 1.5))
            p.setBrush(SCORE_COLOR)
            points = [QPointF(x(s), rect.bottom() - rect.height() * v) for s, v in self.scores]
            p.drawPolyline(QPolygonF(points))
            for point in points:
                p.drawEllipse(point, 2.5, 2.5)
        p.setPen(QPen(SCORE_COLOR))
        p.drawText(QRectF(rect.right() + 2, rect.top() - 4, 28, 12), Qt.AlignLeft, "1.0")
        p.drawText(QRectF(rect.right() + 2, rect.bottom() - 8, 28, 12), Qt.AlignLeft, "0")
        p.setPen(QPen(QColor(160, 160, 160)))
        p.drawText(QRectF(rect.left(), rect.bottom() + 2, rect.width(), 14), Qt.AlignCenter,
                   "loss (blue) · validation AP@0.5 (orange) · base model (grey)")
        p.end()
