"""Which recorded firings tell the task's keepers (and its notification blocks, and the global
alarm channels): the alarm conditions of the task's policy (deployments/policy.py).

* a failure, once the firing's last attempt failed, when it makes ``AlarmAfterFailures``
  failures in a row (1, the default and the original's behaviour: every failure); a success
  ends the run of failures, and the next one counts from 1 again;
* a firing that began more than ``AlarmLateSeconds`` after its instant (0: never);
* a Missed run (instants not fired by the MisfirePolicy), with ``AlarmOnMissed``.

The counts of failures in a row live in the master's memory: a master restart starts them
again (at worst one alarm comes late). Records arrive in batches in the order each node fired
them, so a task's failures are counted in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from schedulemaster.coordination.wire import FiringRecord
from schedulemaster.deployments.spec import TaskSpec

MAX_TRACKED = 100_000  # tasks whose failures in a row are counted at once, at most


@dataclass
class Alarm:
    record: FiringRecord
    message: str


class FiringAlarms:
    def __init__(self):
        self.in_a_row: dict[str, int] = {}  # task id -> failures in a row (last attempts)

    @staticmethod
    def may_alarm(r: FiringRecord) -> bool:
        """Whether the record might alarm: its task's spec is needed to know. A late firing
        might only when its node saw it later than the task's AlarmLateSeconds."""
        if not r.last_attempt:  # a retried attempt: its firing is told of after its last one
            return False
        return ((not r.ok and not r.not_run) or r.not_run == "Missed"
                or (not r.not_run and r.attempt == 1 and r.fire.get("late_alarm") is True))

    def decide(self, records: list[FiringRecord], specs: dict) -> list[Alarm]:
        """The alarms these records (in the order they ran) raise; ``specs``: task id -> TaskSpec
        of every record that ``may_alarm``."""
        out: list[Alarm] = []
        for r in records:
            key = str(r.task_id)
            if r.ok and not r.not_run:
                self.in_a_row.pop(key, None)
            spec: TaskSpec | None = specs.get(r.task_id)
            if spec is None or not self.may_alarm(r):
                continue
            pol = spec.Policy
            late = r.fire.get("lateness_ms")
            if r.not_run == "Missed":
                if pol.AlarmOnMissed:
                    out.append(Alarm(r, r.message))
                continue
            if not r.ok:
                if len(self.in_a_row) >= MAX_TRACKED and key not in self.in_a_row:
                    self.in_a_row.clear()
                n = self.in_a_row[key] = self.in_a_row.get(key, 0) + 1
                if n % pol.AlarmAfterFailures == 0:
                    out.append(Alarm(r, r.message if pol.AlarmAfterFailures == 1
                                     else f"{n} failures in a row; the last: {r.message}"))
            elif (pol.AlarmLateSeconds and r.attempt == 1 and isinstance(late, (int, float))
                  and late / 1000 > pol.AlarmLateSeconds):  # a later attempt is late by its retry waits
                out.append(Alarm(r, f"fired {late / 1000:.1f} s after its instant (AlarmLateSeconds "
                                    f"{pol.AlarmLateSeconds}); {r.message}"))
        return out


__all__ = ["Alarm", "FiringAlarms"]
