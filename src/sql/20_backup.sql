
/*
 * Part 2: the state flip around backups (src/backup.c).
 */

CREATE FUNCTION replstamp.prepare_backup(label text DEFAULT NULL)
RETURNS text
LANGUAGE C
SET synchronous_commit = on
AS 'MODULE_PATHNAME', 'replstamp_prepare_backup';
COMMENT ON FUNCTION replstamp.prepare_backup(text) IS
    'mark every database with replstamp ''backup'' and record its serials; call before an outside backup starts';

CREATE FUNCTION replstamp.finish_backup()
RETURNS void
LANGUAGE C
AS 'MODULE_PATHNAME', 'replstamp_finish_backup';
COMMENT ON FUNCTION replstamp.finish_backup() IS
    'mark every database that is ''backup'' ''original'' again; call after an outside backup ended';

REVOKE ALL ON FUNCTION replstamp.prepare_backup(text), replstamp.finish_backup() FROM PUBLIC;

CREATE PROCEDURE replstamp.backup(target text, fast boolean DEFAULT true,
                                  max_rate integer DEFAULT 0, label text DEFAULT NULL)
LANGUAGE C
AS 'MODULE_PATHNAME', 'replstamp_backup';
COMMENT ON PROCEDURE replstamp.backup(text, boolean, integer, text) IS
    'a self-contained, verifiable base backup of the whole cluster into target, taken while every database with replstamp is marked ''backup''';

REVOKE ALL ON PROCEDURE replstamp.backup(text, boolean, integer, text) FROM PUBLIC;
