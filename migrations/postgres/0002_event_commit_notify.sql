-- o2o-sidecar store, PostgreSQL, version 2: wake other replicas when an event commits.
--
-- Every insert into `events` sends NOTIFY on channel `o2o_events` with the new seq as payload.
-- NOTIFY is transactional: listeners receive it only when (and if) the appending transaction
-- commits, in commit order. The payload is only a hint; readers always read the table.

CREATE FUNCTION o2o_notify_event_committed() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('o2o_events', NEW.seq::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify_commit
    AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION o2o_notify_event_committed();
