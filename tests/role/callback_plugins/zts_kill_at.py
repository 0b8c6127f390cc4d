# -*- coding: utf-8 -*-
"""A test's controller killer: with ZTS_KILL_AT=NAME in the environment, ansible-playbook sends itself
ZTS_KILL_SIGNAL (default KILL) when the task (or handler) whose name contains NAME is about to start, for its
ZTS_KILL_NTH (default 1) start. Its workers are idle then, so the kill falls exactly on that task boundary. With
ZTS_RECORD=FILE it appends the name of every task start to FILE instead (the boundaries listed in docs/FAULTS.md).
Used by tests/role/test_role_faults.py; enabled there with ANSIBLE_CALLBACKS_ENABLED=zts_kill_at."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import signal
import sys

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = '''
name: zts_kill_at
type: aggregate
short_description: kills the controller at a task boundary (tests only)
description: With ZTS_KILL_AT set, the controller sends itself a signal when a task whose name contains it starts.
requirements: [enabled in the test's environment]
'''


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'zts_kill_at'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self.wanted = os.environ.get('ZTS_KILL_AT', '')
        self.nth = int(os.environ.get('ZTS_KILL_NTH', '1'))
        self.signal = getattr(signal, 'SIG' + os.environ.get('ZTS_KILL_SIGNAL', 'KILL'))
        self.seen = 0
        self.record = os.environ.get('ZTS_RECORD', '')

    def _start(self, task):
        name = task.get_name()
        if self.record:
            with open(self.record, 'a') as handle:
                handle.write(name + '\n')
        if self.wanted and self.wanted in name:
            self.seen += 1
            if self.seen == self.nth:
                sys.stdout.write('\nzts_kill_at: %s before "%s"\n' % (self.signal, name))
                sys.stdout.flush()
                os.kill(os.getpid(), self.signal)

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._start(task)
