# One round trip appends an audit event: the function takes the chain's lock, reads the head, hashes and inserts.
# The lock is held from the append to the commit, so the fewer round trips between the two, the more writers per
# second the chain admits. The bytes hashed are exactly foundation.audit.canonical_event_bytes (the caller sends
# the canonical JSON up to the head's fields, which sort last), so verification in Python is unchanged.
from django.db import migrations

APPEND_LOCK_ID = 0x61756469745F6C6B

CREATE = f"""
CREATE FUNCTION foundation_append_audit_event(
    p_canonical_prefix text, p_occurred_at timestamptz, p_actor_id integer, p_actor_name text, p_action text,
    p_model_name text, p_object_type text, p_object_id text, p_before jsonb, p_after jsonb)
RETURNS TABLE (event_id bigint, event_sequence bigint, event_prev_hash text, event_hash text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    head_sequence bigint;
    head_hash text;
    new_hash text;
BEGIN
    PERFORM pg_advisory_xact_lock({APPEND_LOCK_ID});
    -- A new statement, so a new snapshot (READ COMMITTED): it sees the append committed by the lock's last holder.
    SELECT e.sequence, e.hash INTO head_sequence, head_hash
      FROM governance_auditevent e ORDER BY e.sequence DESC LIMIT 1;
    IF NOT FOUND THEN
        head_sequence := 0;
        head_hash := repeat('0', 64);
    END IF;
    new_hash := encode(sha256(convert_to(
        p_canonical_prefix || '"prev_hash":"' || head_hash || '","sequence":' || (head_sequence + 1) || '}}',
        'UTF8')), 'hex');
    RETURN QUERY
    INSERT INTO governance_auditevent (sequence, occurred_at, actor_id, actor_name, action, model_name, object_type,
                                       object_id, before, after, prev_hash, hash)
    VALUES (head_sequence + 1, p_occurred_at, p_actor_id, p_actor_name, p_action, p_model_name, p_object_type,
            p_object_id, p_before, p_after, head_hash, new_hash)
    RETURNING id, sequence, prev_hash::text, hash::text;
END
$$;
"""

DROP = ("DROP FUNCTION foundation_append_audit_event(text, timestamptz, integer, text, text, text, text, text, "
        "jsonb, jsonb);")


class Migration(migrations.Migration):
    dependencies = [("foundation", "0001_initial")]

    operations = [migrations.RunSQL(CREATE, DROP)]
