# replstamp's background work pins its own transaction settings: a database
# owner (no superuser) who sets default_transaction_read_only = on,
# SERIALIZABLE and timeouts for the database, and a role's own defaults
# there, stop neither sync(), prune() nor the sync worker, and the applying
# worker runs read-write, READ COMMITTED, without timeouts (a trigger on the
# table records what it sees).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my $a = replstamp_node('a', sql => $TRACK_T);
my $b = replstamp_node('b');
my $aconn = $a->connstr('postgres');
$b->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN;
	CREATE DATABASE ro OWNER alice;
});
$b->safe_psql('ro', qq{
	CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT replstamp.track('t');
	SELECT replstamp.add_peer('a', \$\$$aconn\$\$);
	CREATE TABLE seen (id int, read_only text, isolation text, lock_timeout text,
		statement_timeout text, idle_timeout text);
	CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS \$\$
	BEGIN
		INSERT INTO public.seen VALUES (NEW.id, current_setting('transaction_read_only'),
			current_setting('transaction_isolation'), current_setting('lock_timeout'),
			current_setting('statement_timeout'),
			current_setting('idle_in_transaction_session_timeout'));
		RETURN NEW;
	END \$\$;
	CREATE TRIGGER note AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION note();
	ALTER TABLE t ENABLE ALWAYS TRIGGER note;
	-- The workers connect as the bootstrap superuser: its defaults here.
	ALTER ROLE CURRENT_USER IN DATABASE ro SET default_transaction_isolation = 'repeatable read';
});
# The database owner, no superuser, sets the database's defaults.
$b->safe_psql('postgres', q{
	SET ROLE alice;
	ALTER DATABASE ro SET default_transaction_read_only = on;
	ALTER DATABASE ro SET default_transaction_isolation = 'serializable';
	ALTER DATABASE ro SET lock_timeout = '1ms';
	ALTER DATABASE ro SET statement_timeout = '1h';
	ALTER DATABASE ro SET idle_in_transaction_session_timeout = '1h';
});
is($b->safe_psql('ro', 'SHOW default_transaction_read_only'), 'on',
	'sessions in the database are read-only by default');
my $pinned = "off|read committed|0|0|0";
my $seen = q{SELECT read_only || '|' || isolation || '|' || lock_timeout || '|' || statement_timeout
	|| '|' || idle_timeout AS s, count(*) FROM seen GROUP BY 1 ORDER BY 1};

$a->safe_psql('postgres', "INSERT INTO t SELECT g, 'by sync()' FROM generate_series(1, 3) g");
my ($rc, $out, $err) = $b->psql('ro', "SELECT replstamp.sync('a')");
is($rc . ':' . $out, '0:3', 'sync() applies the changes in spite of the defaults')
  or diag($err);
is($b->safe_psql('ro', $seen), "$pinned|3",
	'the worker behind sync() applies read-write, READ COMMITTED, without timeouts');
($rc, $out, $err) = $b->psql('ro', 'SELECT replstamp.prune() >= 0');
is($rc . ':' . $out, '0:t', 'prune() runs in spite of the defaults') or diag($err);

# The sync worker the launcher starts.
set_guc($b, 'replstamp.sync_interval', '1');
$a->safe_psql('postgres', "INSERT INTO t SELECT g, 'by the worker' FROM generate_series(4, 6) g");
$b->poll_query_until('ro', 'SELECT count(*) = 6 FROM t')
  or die 'the sync worker applied nothing';
pass('the sync worker applies the changes in spite of the defaults');
is($b->safe_psql('ro', $seen), "$pinned|6", 'with the same settings');
is($b->safe_psql('ro', "SELECT last_error IS NULL FROM replstamp.peers WHERE name = 'a'"), 't',
	'and no error is recorded');

$a->stop;
$b->stop;
done_testing();
