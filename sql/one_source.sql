--
-- one_source: rules written once (issue 10).  The state names come from C,
-- the settings' ranges from the CHECK constraints of reliq.subscription,
-- MaxAckPending from the C function the workers use.
--

-- The names, as C writes them.
SELECT * FROM reliq._state_names();

-- Every state subscription_stats shows is one of them.
SELECT count(*) AS unknown_states
  FROM reliq.subscription_stats s, reliq._state_names() n
 WHERE s.state NOT IN (n.running, n.paused, n.stopped, n.failing, n.backing_off,
                       n.disconnected, n.connecting, n.fenced, n.acquiring, n.diverged,
                       n.standby);

-- MaxAckPending: room for every worker's batch and the next, at least 1000.
SELECT reliq._max_ack_pending(100, 1) AS small,
       reliq._max_ack_pending(1000, 4) AS large,
       reliq._max_ack_pending(10000, 1024) AS largest;

-- A constraint judged on a value not stored, with its bounds.
SELECT 'batch_size 0' AS value, * FROM reliq._setting_check('batch_size_range', 0)
UNION ALL
SELECT 'batch_size 10000', * FROM reliq._setting_check('batch_size_range', 10000)
UNION ALL
SELECT 'batch_size NULL', * FROM reliq._setting_check('batch_size_range', NULL::integer);
SELECT ok, extract(epoch FROM low) AS low_seconds, high
  FROM reliq._setting_check('ack_wait_range', interval '500 milliseconds');
SELECT (reliq._setting_check('backoff_not_empty', '{}'::interval[])).ok AS empty_backoff_ok;
SELECT try($$SELECT reliq._setting_check('no_such_constraint', 1)$$);

-- The checks follow the constraint: widen it, and what was refused passes,
-- with the new bound in the message.
BEGIN;
ALTER TABLE reliq.subscription DROP CONSTRAINT batch_size_range,
    ADD CONSTRAINT batch_size_range CHECK (batch_size BETWEEN 1 AND 20000);
SELECT try($$SELECT reliq._check_settings('x', 15000, 1, 1, '{1s}', '30s', NULL)$$) AS widened;
SELECT try($$SELECT reliq._check_settings('x', 20001, 1, 1, '{1s}', '30s', NULL)$$) AS beyond;
ROLLBACK;
SELECT try($$SELECT reliq._check_settings('x', 15000, 1, 1, '{1s}', '30s', NULL)$$) AS restored;
