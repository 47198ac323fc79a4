
/*
 * Part 2: the state flip around backups (src/backup.c).
 */

CREATE FUNCTION replstamp.prepare_backup(label text DEFAULT NULL)
RETURNS text
LANGUAGE C
SET synchronous_commit = on
AS 'MODULE_PATHNAME', 'replstamp_prepare_backup';
COMMENT ON FUNCTION replstamp.prepare_backup(text) IS
    'mark this database ''backup'' and record its serials; call before an outside backup starts';

CREATE FUNCTION replstamp.finish_backup()
RETURNS void
LANGUAGE C
AS 'MODULE_PATHNAME', 'replstamp_finish_backup';
COMMENT ON FUNCTION replstamp.finish_backup() IS
    'mark this database ''original'' again; call after an outside backup ended';

REVOKE ALL ON FUNCTION replstamp.prepare_backup(text), replstamp.finish_backup() FROM PUBLIC;
