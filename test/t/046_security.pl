# What a table owner can and cannot do through replstamp (issue 8, items 1
# and 10):
#  - her code runs during a superuser's sync, as her, and whatever settings
#    it changes end with it: a search_path she sets cannot steer the
#    operators of anybody's code that runs after hers, so her operator
#    never runs as a superuser;
#  - she cannot switch the stamping of her table off, nor rename it,
#    behind replstamp's back;
#  - replstamp.peers, which everybody reads, never shows row values;
#  - replstamp.status shows who holds the lowest uncommitted serial back.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my ($a, $b) = map {
	replstamp_node($_, sql => q{
		CREATE EXTENSION replstamp;
		CREATE SCHEMA app;
		CREATE TABLE app.accounts (id int PRIMARY KEY, owner_id uuid, balance int);
		CREATE TABLE public.ledger (id int PRIMARY KEY, account uuid);
		CREATE TABLE public.cards (id int PRIMARY KEY, pin int);
		SELECT replstamp.track(t) FROM unnest('{app.accounts,public.ledger,public.cards}'::regclass[]) t;
	})
} qw(a b);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
sub as_alice { my ($sql) = @_; return $b->safe_psql('postgres', $sql, extra_params => [ '-U', 'alice' ]); }
add_peer($b, 'a', $a);

# 1. The escalation of issue 8, item 1, on the puller b.  alice owns
# app.accounts and the schema app; she defines app.= for uuid, which makes
# whoever runs it with app first in search_path a superuser's accomplice,
# and an ENABLE ALWAYS trigger that puts app first in search_path for the
# rest of the session.
sq($b, q{
	CREATE ROLE alice LOGIN;
	ALTER SCHEMA app OWNER TO alice;
	ALTER TABLE app.accounts OWNER TO alice;
});
as_alice(q{
	CREATE FUNCTION app.evil_eq(uuid, uuid) RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
			EXECUTE 'ALTER ROLE alice SUPERUSER';
		END IF;
		RETURN pg_catalog.uuid_eq($1, $2);
	END $$;
	CREATE OPERATOR app.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = app.evil_eq);
	CREATE FUNCTION app.stick_path() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_catalog.set_config('search_path', 'app, pg_catalog', false);
		RETURN NEW;
	END $$;
	CREATE TRIGGER stick_path AFTER INSERT OR UPDATE ON app.accounts
		FOR EACH ROW EXECUTE FUNCTION app.stick_path();
	ALTER TABLE app.accounts ENABLE ALWAYS TRIGGER stick_path;
});
# Code of another owner that runs later in the same sync: a superuser's
# trigger on public.ledger that compares uuids with a plain "=", as most
# code does, and notes the search_path it ran with.
sq($b, q{
	CREATE TABLE public.seen (n serial PRIMARY KEY, path text, matched boolean);
	CREATE FUNCTION public.ledger_check() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.seen (path, matched)
			VALUES (pg_catalog.current_setting('search_path'),
			        NEW.account = '00000000-0000-0000-0000-000000000001');
		RETURN NEW;
	END $$;
	CREATE TRIGGER ledger_check AFTER INSERT ON public.ledger
		FOR EACH ROW EXECUTE FUNCTION public.ledger_check();
	ALTER TABLE public.ledger ENABLE ALWAYS TRIGGER ledger_check;
});
my $default_path = sq($b, 'SHOW search_path');
# What owners' code runs with during a sync: only pg_catalog (as in
# PostgreSQL's logical replication, where it is empty).
my $sync_path = 'pg_catalog, pg_temp';

# The peer writes alice's row first, then a ledger row: one sync applies
# both, in that order.
sq($a, q{
	INSERT INTO app.accounts VALUES (1, '00000000-0000-0000-0000-000000000001', 100);
	INSERT INTO public.ledger VALUES (1, '00000000-0000-0000-0000-000000000001');
});
my $out = sq($b, "SELECT replstamp.sync('a'); SHOW search_path; SELECT current_user");
is($out, "2\n$default_path\npostgres",
	"a superuser's sync applies alice's row; the superuser's session keeps its search_path");
is(sq($b, "SELECT rolsuper FROM pg_roles WHERE rolname = 'alice'"), 'f', 'alice is not a superuser');
is(sq($b, 'SELECT balance FROM app.accounts WHERE id = 1'), '100', "alice's row is applied");
is(sq($b, 'SELECT path FROM public.seen'), $sync_path,
	"the next owner's code runs with the sync's search_path, not the one alice's trigger set");
is(sq($b, 'SELECT matched FROM public.seen'), 't', 'and its "=" is the built-in one');
# Through sync_all too, where one worker syncs every peer.
sq($a, q{
	UPDATE app.accounts SET balance = 200 WHERE id = 1;
	INSERT INTO public.ledger VALUES (2, '00000000-0000-0000-0000-000000000002');
});
is(sq($b, 'SELECT replstamp.sync_all()'), '2', 'sync_all applies the next two changes');
is(sq($b, 'SELECT path FROM public.seen WHERE n = 2'), $sync_path, 'with the same search_path');
is(sq($b, "SELECT rolsuper FROM pg_roles WHERE rolname = 'alice'"), 'f', 'alice is still not a superuser');

# 10. The stamp triggers of a tracked table stay in place, enabled ALWAYS,
# calling replstamp's functions, and the table keeps its name, whatever its
# owner tries.
sq($b, q{CREATE SCHEMA app_other AUTHORIZATION alice; GRANT CREATE ON DATABASE postgres TO alice});
as_alice(q{CREATE FUNCTION app.noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$});
my $changes = sub { sq($b, "SELECT count(*) FROM replstamp.changes WHERE relation = 'app.accounts'") };
my $before = $changes->();
for my $ddl (
	'ALTER TABLE app.accounts DISABLE TRIGGER replstamp_stamp',
	'ALTER TABLE app.accounts DISABLE TRIGGER USER',
	'ALTER TABLE app.accounts DISABLE TRIGGER ALL',
	'ALTER TABLE app.accounts ENABLE TRIGGER replstamp_stamp',
	'ALTER TABLE app.accounts ENABLE REPLICA TRIGGER replstamp_stamp',
	'ALTER TABLE app.accounts DISABLE TRIGGER replstamp_refuse_truncate',
	'DROP TRIGGER replstamp_stamp ON app.accounts',
	'DROP TRIGGER replstamp_refuse_truncate ON app.accounts',
	'ALTER TRIGGER replstamp_stamp ON app.accounts RENAME TO not_stamping',
	'ALTER TRIGGER replstamp_refuse_truncate ON app.accounts RENAME TO not_refusing',
	'CREATE OR REPLACE TRIGGER replstamp_stamp AFTER INSERT OR UPDATE OR DELETE ON app.accounts FOR EACH ROW EXECUTE FUNCTION app.noop()',
	'BEGIN; CREATE OR REPLACE TRIGGER replstamp_stamp AFTER INSERT OR UPDATE OR DELETE ON app.accounts FOR EACH ROW EXECUTE FUNCTION app.noop(); ALTER TABLE app.accounts ENABLE ALWAYS TRIGGER replstamp_stamp; COMMIT',
	'ALTER TABLE app.accounts RENAME TO ledger2',
	'ALTER TABLE app.accounts SET SCHEMA app_other',
	'ALTER SCHEMA app RENAME TO app2')
{
	my ($rc, $o, $err) = $b->psql('postgres', $ddl, extra_params => [ '-U', 'alice' ]);
	like($err, qr/ERROR:  cannot [a-z, ]+ table app\.accounts\b.*\n.*\nHINT:  .*replstamp\.untrack\(\)/,
		"the table owner cannot: $ddl");
}
as_alice('INSERT INTO app.accounts VALUES (2, NULL, 0)');
is($changes->(), $before + 1, 'and her next change is stamped');
is(sq($b, q{SELECT string_agg(tgname || ':' || tgfoid::regproc || ':' || tgenabled::text, ',' ORDER BY tgname)
	FROM pg_trigger WHERE tgrelid = 'app.accounts'::regclass AND tgname LIKE 'replstamp%'}),
	'replstamp_refuse_truncate:replstamp.refuse_truncate:A,replstamp_stamp:replstamp.stamp:A',
	'both triggers are there, calling replstamp, enabled ALWAYS');
is(sq($b, 'SELECT tracked_tables_not_stamped FROM replstamp.status'), '0',
	'replstamp.status shows no tracked table unstamped');

# The guards run as whoever runs the DDL, with that session's search_path:
# they must not call alice's operators either.
as_alice(q{
	CREATE FUNCTION app.evil_texteq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) current_user) THEN
			EXECUTE 'ALTER ROLE alice SUPERUSER';
		END IF;
		RETURN pg_catalog.texteq($1, $2);
	END $$;
	CREATE OPERATOR app.= (LEFTARG = text, RIGHTARG = text, FUNCTION = app.evil_texteq);
});
sq($b, q{SET search_path = app, pg_catalog;
	ALTER TABLE app.accounts ALTER COLUMN balance SET DEFAULT 0;
	DROP TRIGGER ledger_check ON public.ledger;
	CREATE TABLE public.scratch (id int PRIMARY KEY); DROP TABLE public.scratch});
is(sq($b, "SELECT rolsuper FROM pg_roles WHERE rolname = 'alice'"), 'f',
	"a superuser's DDL with alice's schema first in search_path does not run her operators");

# After untrack(), the table is hers to change.
sq($b, "SELECT replstamp.untrack('app.accounts')");
as_alice(q{ALTER TABLE app.accounts DISABLE TRIGGER ALL;
	ALTER TABLE app.accounts RENAME TO accounts_old});
pass('after untrack(), the owner may disable its triggers and rename it');

# 10. A value that does not fit: replstamp.peers, which everybody reads,
# says which change failed, where and why, without the value or the key.
sq($b, 'CREATE ROLE plain LOGIN');
sq($a, 'INSERT INTO public.cards VALUES (98765, 1)');
my $a_id = sq($a, 'SELECT replica_id FROM replstamp.node');
my $serial = sq($a, "SELECT serial FROM replstamp.changes WHERE relation = 'public.cards'");
sq($a, q{ALTER TABLE replstamp.changes DISABLE TRIGGER USER;
	UPDATE replstamp.changes SET row_image = '{"id": 98765, "pin": "4111-1111-1111-1111"}'
	 WHERE relation = 'public.cards'});
my ($rc, $o, $err) = $b->psql('postgres', "SELECT replstamp.sync('a')");
like($err, qr/invalid input syntax for type integer/, 'the superuser who syncs sees the cause');
my $last_error = $b->safe_psql('postgres', "SET ROLE plain; SELECT last_error FROM replstamp.peers WHERE name = 'a'");
like($last_error, qr/^invalid_text_representation \(SQLSTATE 22P02\) \(applying change /,
	'replstamp.peers says a value did not fit, with its SQLSTATE');
like($last_error, qr{applying change $a_id/$serial \(INSERT\) of table public\.cards from peer "a"},
	'and names the change and the table');
is(sq($b, "SELECT last_error_change FROM replstamp.peers WHERE name = 'a'"), "$a_id/$serial",
	'last_error_change holds its stamp');
unlike($last_error, qr/4111/, 'but not the value');
unlike($last_error, qr/98765/, 'nor the key');
($rc, $o, $err) = $b->psql('postgres', 'SELECT replstamp.sync_all()');
unlike(sq($b, "SELECT last_error FROM replstamp.peers WHERE name = 'a'"), qr/4111|98765/,
	'nor after sync_all');
sq($a, "DELETE FROM replstamp.changes WHERE relation = 'public.cards'");
sq($b, "SELECT replstamp.skip('$a_id', $serial)");
like(sq($b, "SELECT error FROM replstamp.skipped WHERE serial = $serial"), qr/^invalid_text_representation \(SQLSTATE 22P02\)/,
	'replstamp.skip() records the error the sync reported for that change');
sq($b, "SELECT replstamp.sync('a')");
is(sq($b, "SELECT last_error IS NULL FROM replstamp.peers WHERE name = 'a'"), 't',
	'once the change is skipped, the next sync succeeds and clears the error');

# 10. An idle transaction of a DML user holds the lowest uncommitted
# serial back: replstamp.status names it and its age.
sq($b, 'GRANT INSERT ON public.ledger, public.seen TO alice; GRANT USAGE ON SEQUENCE public.seen_n_seq TO alice');
my $idle = $b->background_psql('postgres', extra_params => [ '-U', 'alice' ]);
my $pid = $idle->query_safe('SELECT pg_backend_pid()');
$idle->query_safe('BEGIN');
$idle->query_safe("INSERT INTO public.ledger VALUES (100, '00000000-0000-0000-0000-000000000001')");
is(sq($b, 'SELECT lus_holder_pid FROM replstamp.status'), $pid,
	'replstamp.status shows the pid of the idle transaction holding the LUS');
is(sq($b, "SELECT lus_holder_xact_age > '0'::interval FROM replstamp.status"), 't', 'and its age');
$idle->query_safe('COMMIT');
$idle->quit;
is(sq($b, 'SELECT lus_holder_pid IS NULL AND lus_holder_xact_age IS NULL FROM replstamp.status'), 't',
	'once it commits, nobody holds the LUS');

$_->stop for ($a, $b);
done_testing();
