# Every value replicates exactly, whatever the session settings of the
# writer and of the puller: DateStyle, IntervalStyle, TimeZone,
# extra_float_digits, bytea_output, search_path and lc_monetary.
#
# The writer w stamps rows of one table per type family from two sessions
# with hostile settings that differ from each other; the puller p has
# hostile server-wide defaults of its own (so a sync inherits them unless it
# protects itself).  Each table is then compared on both nodes under
# identical settings, row by row, and some values bit for bit.  Also: a
# timestamptz primary key written under two TimeZones is one row (and last
# writer wins treats it as one), the change logs agree, and a change whose
# relation is not spelled canonically is refused.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

# A second locale for lc_monetary on the puller, if this machine has one.
my @locales = split /\n/, `locale -a 2>/dev/null`;
my ($money_locale) = grep {
	my $l = $_;
	grep { lc($l) eq lc($_) } qw(de_DE.utf8 fr_FR.utf8 nl_NL.utf8 es_ES.utf8 it_IT.utf8 en_GB.utf8)
} @locales;

my %init = (extra => [ '--encoding=UTF8', '--locale=C' ]);
my $w = replstamp_node('w', init => \%init, sql => 'CREATE EXTENSION replstamp');
my $p = replstamp_node('p', init => \%init,
	conf => [
		"datestyle = 'German, DMY'",
		"intervalstyle = 'iso_8601'",
		"timezone = 'America/Sao_Paulo'",
		'extra_float_digits = -15',
		"bytea_output = 'escape'",
		"search_path = 'weird, public'",
		($money_locale ? ("lc_monetary = '$money_locale'") : ()),
	],
	sql => 'CREATE EXTENSION replstamp');
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

# The session every comparison runs in, identical on both nodes.
my $CMP = q{SET timezone = 'UTC'; SET datestyle = 'ISO, YMD'; SET intervalstyle = 'postgres';
	SET extra_float_digits = 3; SET bytea_output = 'hex'; SET search_path = pg_catalog;
	SET lc_monetary = 'C'; };
sub cmp_sql { my ($n, $sql) = @_; return sq($n, $CMP . $sql); }

# Identical types and tables on both nodes, every name qualified (p's
# search_path starts with weird).  p gets an extra table first, so that
# the OIDs of the tables differ between the nodes.
sq($p, 'CREATE TABLE public.pad (id int PRIMARY KEY)');
my @families = (
	[ 't_date', 'd date', [
		q{'2026-03-05'}, q{'2026-12-31'}, q{'infinity'}, q{'-infinity'},
		q{'0044-03-15 BC'}, q{'4714-11-24 BC'}, q{'5874897-12-31'} ] ],
	[ 't_time', 't time, ttz timetz', [
		q{'13:14:15.123456', '13:14:15.123456+05:30'},
		q{'00:00:00', '23:59:59.999999-15:59'},
		q{'24:00:00', '00:00:00+00'} ] ],
	[ 't_timestamp', 'ts timestamp', [
		q{'2026-03-05 13:14:15.123456'}, q{'infinity'}, q{'-infinity'},
		q{'0044-03-15 12:00:00 BC'}, q{'2026-12-31 23:59:59.999999'} ] ],
	[ 't_timestamptz', 'tstz timestamptz', [
		q{'2026-03-05 12:00:00+00'}, q{'2026-07-15 23:34:56.789012+00'},
		q{'infinity'}, q{'-infinity'}, q{'2026-10-11 03:00:00+00'} ] ],
	[ 't_tstz_old', 'tstz timestamptz', [
		q{'1850-06-01 00:00:00+00'}, q{'0044-03-15 12:00:00+00 BC'} ] ],
	[ 't_interval', 'iv interval', [
		q{make_interval(days => -1, hours => -2)},
		q{make_interval(years => 1, months => -2, days => 3, hours => -4, mins => -5, secs => -6.789)},
		q{make_interval(years => -1, months => -2)},
		q{make_interval(months => 1, days => -30)},
		q{make_interval(years => -3, months => -4, days => -5, hours => -6, mins => -7, secs => -8.5)},
		q{make_interval(secs => 0.000001)} ] ],
	[ 't_float', 'f8 float8, f4 float4', [
		q{'0.1'::float8 + '0.2'::float8, '0.1'::float4 + '0.2'::float4},
		q{'1e-300', '1e-38'},
		q{'NaN', 'NaN'},
		q{'Infinity', 'Infinity'},
		q{'-Infinity', '-Infinity'},
		q{'-0', '-0'},
		q{1::float8 / 3, 1::float4 / 3},
		q{'4.9e-324', '1.4e-45'},
		q{'1.7976931348623157e308', '3.4028235e38'},
		q{pi(), pi()} ] ],
	[ 't_numeric', 'n numeric', [
		q{'NaN'}, q{'Infinity'}, q{'-Infinity'},
		q{('0.' || repeat('0', 1000) || '1')::numeric},
		q{('1' || repeat('0', 1000) || '.5')::numeric},
		q{'-0.30000000000000004'}, q{'1e-16383'} ] ],
	[ 't_money', 'm money', [
		q{'1234.56'::numeric::money}, q{'-0.01'::numeric::money}, q{'92233720368547758.07'::numeric::money} ] ],
	[ 't_bytea', 'b bytea', [
		q{(SELECT string_agg(set_byte('\x00'::bytea, 0, i), ''::bytea ORDER BY i) FROM generate_series(0, 255) i)},
		q{'\x'::bytea}, q{decode('5c78343120275c5c', 'hex')} ] ],
	[ 't_array', 'ad date[], af float8[], am int[], ats timestamptz[], atx text[]', [
		q{ARRAY['2026-03-05'::date, 'infinity', NULL, '0044-03-15 BC'],
		  ARRAY['0.1'::float8 + '0.2'::float8, 'NaN', '-0', NULL, '1e-300'],
		  '{{1,2},{3,NULL}}', ARRAY['2026-03-05 12:00:00+00'::timestamptz, NULL],
		  ARRAY['a"b', 'c\d', NULL, 'NULL', '', ' x ']},
		q{'{}', '{}', '[0:1][5:6]={{1,2},{3,4}}', '{}', '{}'} ] ],
	[ 't_range', 'tr tstzrange, dr daterange, nr numrange, tm tstzmultirange, dm datemultirange, nm nummultirange', [
		q{tstzrange('2026-03-05 12:00:00+00', 'infinity', '[)'),
		  daterange('2026-02-01', '2026-03-05', '[]'),
		  numrange(0.1, 0.30000000000000004, '(]'),
		  tstzmultirange(tstzrange('2026-03-05 12:00:00+00', '2026-03-06 00:00:00+00'),
		                 tstzrange('1850-06-01 00:00:00+00', '1850-06-02 00:00:00+00')),
		  datemultirange(daterange('0044-03-15 BC', '2026-03-05'), daterange('2026-12-01', NULL)),
		  nummultirange(numrange(NULL, -1), numrange(1e-20, 1))},
		q{'empty', 'empty', 'empty', '{}', '{}', '{}'} ] ],
	[ 't_json', 'j json, jb jsonb', [
		q{'{"f": 0.30000000000000004, "u": "\u00e9\u0000\ud83d\ude00", "big": 1e400,  "a": 1, "a": 2}',
		  '{"f": 0.30000000000000004, "u": "\u00e9\ud83d\ude00", "big": 1e400, "tiny": 1e-300, "neg0": -0.0}'},
		q{'"2026-03-05"', '[1.5e-10, "\\\\", null]'} ] ],
	[ 't_enum', 'e public.mood', [ q{'sad'}, q{'it''s "odd"'} ] ],
	[ 't_domain', 'm public.moment', [ q{'2026-03-05 12:00:00+00'}, q{'infinity'} ] ],
	[ 't_composite', 'c public.pair', [
		q{ROW('2026-03-05', '0.1'::float8 + '0.2'::float8)::public.pair},
		q{ROW('infinity', '-0')::public.pair},
		q{ROW(NULL, 'NaN')::public.pair} ] ],
	[ 't_misc', 'u uuid, i inet, c cidr, m6 macaddr, m8 macaddr8, b bit(8), vb varbit', [
		q{'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', '10.0.0.0/8',
		  '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', B'10100101', B'1'},
		q{'00000000-0000-0000-0000-000000000000', '::ffff:1.2.3.4', '2001:db8::/32',
		  'ff:ff:ff:ff:ff:ff', '00:00:00:00:00:00:00:00', B'00000000', B''} ] ],
	[ 't_text', 't text', [
		q{(SELECT string_agg(chr(i), '' ORDER BY i) FROM generate_series(1, 255) i)},
		q{'quote '' double " backslash ' || chr(92) || ' two ' || repeat(chr(92), 2) || 'x41 newline' || chr(10)
		  || 'cr' || chr(13) || 'tab' || chr(9) || 'NULL' || chr(8364) || chr(65279) || chr(128512)},
		q{''}, q{'NULL'} ] ],
	[ 't_geo', 'pt point, bx box', [
		q{point('0.1'::float8 + '0.2'::float8, '-0'::float8),
		  box(point('1e-300', '0.1'::float8 + '0.2'::float8), point(0, 0))} ] ],
	[ 't_tsvector', 'tv tsvector', [
		q{'a:1A fat:2B,4C cat:5D'}, q{$$'it''s' 'back\\slash' 'x y':3$$} ] ],
	[ 't_regclass', 'r regclass', [
		q{'pg_catalog.pg_class'}, q{'weird.target'}, q{'public.target'} ] ],
);
my $ddl = q{
	CREATE SCHEMA weird;
	CREATE TABLE weird.target (id int PRIMARY KEY);
	CREATE TABLE public.target (id int PRIMARY KEY);
	CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'it''s "odd"');
	CREATE DOMAIN public.moment AS timestamptz CHECK (VALUE > '1900-01-01 00:00:00+00');
	CREATE TYPE public.pair AS (d date, f float8);
	CREATE TABLE public.tz_pk (at timestamptz PRIMARY KEY, v text);
	CREATE TABLE public.kc (k int PRIMARY KEY, v text);
	SELECT replstamp.track('public.tz_pk'), replstamp.track('public.kc');
};
$ddl .= "CREATE TABLE public.$_->[0] (id int PRIMARY KEY, $_->[1]); SELECT replstamp.track('public.$_->[0]');\n"
  for @families;
sq($_, $ddl) for ($w, $p);
add_peer($p, 'w', $w);
add_peer($w, 'p', $p);
my $wid = sq($w, 'SELECT replica_id FROM replstamp.node');

# Two writer sessions on w, hostile and different from each other and from p.
my %writer = (
	A => { off => 0, set => q{SET datestyle = 'SQL, DMY'; SET intervalstyle = 'sql_standard';
		SET extra_float_digits = 0; SET timezone = 'Asia/Tokyo'; SET bytea_output = 'escape';
		SET search_path = weird, public;} },
	B => { off => 100, set => q{SET datestyle = 'Postgres, MDY'; SET intervalstyle = 'postgres_verbose';
		SET extra_float_digits = -15; SET timezone = 'Asia/Kathmandu'; SET bytea_output = 'escape';
		SET search_path = public, weird;} },
);
for my $name (sort keys %writer)
{
	my $s = $writer{$name};
	note "writer $name: $s->{set}";
	$s->{psql} = $w->background_psql('postgres');
	$s->{psql}->query_safe($s->{set});
}
note "puller p: DateStyle German, DMY; IntervalStyle iso_8601; TimeZone America/Sao_Paulo; "
  . "extra_float_digits -15; bytea_output escape; search_path weird, public"
  . ($money_locale ? "; lc_monetary $money_locale" : '');

# p pulls from w; returns the error, '' when none.  After a failed sync,
# p's vector is moved past w's changes by hand, so that what comes next is
# still tested.
sub try_pull
{
	my ($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('w')");
	return '' if $rc == 0;
	my $max = sq($w, "SELECT max(serial) FROM replstamp.changes WHERE replica_id = '$wid'");
	sq($p, "INSERT INTO replstamp.vector_state VALUES ('$wid', $max) "
		  . 'ON CONFLICT (replica_id) DO UPDATE SET serial = EXCLUDED.serial');
	return join("\n", grep { /ERROR|HINT/ } split /\n/, $err);
}
sub pull
{
	my ($what) = @_;
	is(try_pull(), '', "$what: the puller applies the writer's changes without error");
	return;
}

# Each row is written by each writer and pulled on its own, so that a value
# the puller cannot read fails alone and the others are still compared.
for my $f (@families)
{
	my ($table, undef, $rows) = @$f;
	my @errors;
	for my $name (sort keys %writer)
	{
		my $i = 0;
		for my $row (@$rows)
		{
			my $id = $writer{$name}{off} + ++$i;
			$writer{$name}{psql}->query_safe("INSERT INTO public.$table VALUES ($id, $row)");
			my $err = try_pull();
			push @errors, "writer $name, id $id: $err" if $err ne '';
		}
	}
	is(join("\n", @errors), '', "$table: the puller applies every change of the writers without error");
}

# Each table: identical on both nodes, row by row, under identical settings.
# On a difference, the rows that differ are shown.
sub keyed_rows
{
	my ($n, $sql) = @_;
	my %rows = map { split /\|/, $_, 2 } split /\n/, cmp_sql($n, $sql);
	return \%rows;
}
sub show_differences
{
	my ($what, $sql, $n1, $n2) = @_;
	my ($r1, $r2) = (keyed_rows($n1, $sql), keyed_rows($n2, $sql));
	for my $k (sort { $a <=> $b } keys %{ { %$r1, %$r2 } })
	{
		my ($v1, $v2) = ($r1->{$k} // '(missing)', $r2->{$k} // '(missing)');
		diag "  $what $k:\n    " . $n1->name . ": $v1\n    " . $n2->name . ": $v2" if $v1 ne $v2;
	}
	return;
}
for my $f (@families)
{
	my $table = $f->[0];
	my $digest = "SELECT count(*) || ' rows, md5 ' || md5(string_agg(t::text, E'\\n' ORDER BY t.id)) FROM public.$table t";
	is(cmp_sql($p, $digest), cmp_sql($w, $digest),
		"$table: every row on the puller equals the writer's, value for value")
	  or show_differences("$table id", "SELECT id, replace(t::text, E'\\n', '\\n') FROM public.$table t", $w, $p);
}

# Single values, exactly, so that a failure names the value.  [table, row
# (1-based, per writer), expression, what].
my @exact = (
	[ 't_date', 1, 'd::text', 'date 2026-03-05 stays that day' ],
	[ 't_date', 5, 'd::text', 'date 0044-03-15 BC stays that day' ],
	[ 't_date', 3, 'd::text', "date 'infinity' stays infinity" ],
	[ 't_time', 1, 'ttz::text', 'timetz keeps its time and offset' ],
	[ 't_timestamp', 1, 'ts::text', 'timestamp keeps its microseconds' ],
	[ 't_timestamptz', 1, 'extract(epoch FROM tstz)::text', 'timestamptz keeps its instant (epoch)' ],
	[ 't_timestamptz', 3, 'tstz::text', "timestamptz 'infinity' stays infinity" ],
	[ 't_tstz_old', 1, 'extract(epoch FROM tstz)::text', 'timestamptz of 1850 (local mean time) keeps its instant' ],
	[ 't_interval', 1, 'iv::text', 'interval -1 day -02:00 keeps the sign of every field' ],
	[ 't_interval', 2, 'iv::text', 'interval with mixed signs keeps months, days and time' ],
	[ 't_interval', 5, 'iv::text', 'negative interval of years, months, days and time stays negative' ],
	[ 't_float', 1, 'float8send(f8)::text', 'float8 0.1+0.2 arrives bit for bit' ],
	[ 't_float', 7, 'float4send(f4)::text', 'float4 1/3 arrives bit for bit' ],
	[ 't_float', 2, 'float8send(f8)::text', 'float8 1e-300 arrives bit for bit' ],
	[ 't_float', 6, 'float8send(f8)::text || float4send(f4)::text', 'float -0 keeps its sign' ],
	[ 't_float', 7, 'float8send(f8)::text', 'float8 1/3 arrives bit for bit' ],
	[ 't_float', 8, 'float8send(f8)::text', 'float8 smallest denormal arrives bit for bit' ],
	[ 't_numeric', 4, 'md5(n::text) || scale(n)', 'numeric with scale 1001 arrives exactly' ],
	[ 't_money', 1, 'cash_send(m)::text', 'money 1234.56 arrives exactly' ],
	[ 't_bytea', 1, 'md5(b) || length(b)', 'bytea of all 256 byte values arrives exactly' ],
	[ 't_array', 1, 'float8send(af[1])::text || ad::text', 'arrays of floats and dates keep every element' ],
	[ 't_range', 1, 'tr::text || dr::text || nr::text', 'ranges keep their bounds' ],
	[ 't_json', 1, 'j::text', 'json keeps its text exactly (floats, escapes, duplicate keys)' ],
	[ 't_domain', 1, 'extract(epoch FROM m)::text', 'a domain over timestamptz keeps its instant' ],
	[ 't_composite', 1, '(c).d::text || float8send((c).f)::text', 'a composite keeps its date and float8 bits' ],
	[ 't_text', 1, 'md5(t) || length(t)', 'text of every character 1..255 arrives exactly' ],
	[ 't_text', 2, 'md5(t) || length(t)', 'text with quotes, backslashes and newlines arrives exactly' ],
	[ 't_geo', 1, 'float8send(pt[0])::text || float8send(pt[1])::text', 'a point keeps its float8 bits' ],
	[ 't_regclass', 2, 'r::text', 'regclass weird.target names the same table' ],
	[ 't_regclass', 3, 'r::text', 'regclass public.target names the same table' ],
);
for my $name (sort keys %writer)
{
	for my $e (@exact)
	{
		my ($table, $row, $expr, $what) = @$e;
		my $id = $writer{$name}{off} + $row;
		my $q = "SELECT coalesce(($expr)::text, '(null)') FROM public.$table WHERE id = $id";
		is(cmp_sql($p, $q), cmp_sql($w, $q), "$what (writer $name)");
	}
}

# Money under a puller's lc_monetary other than the writer's.
SKIP:
{
	skip 'no second locale on this machine (locale -a lists only '
	  . join(', ', @locales) . "): lc_monetary of the puller not varied", 1
	  unless $money_locale;
	my $q = "SELECT string_agg(cash_send(m)::text, ',' ORDER BY id) FROM public.t_money";
	is(cmp_sql($p, $q), cmp_sql($w, $q), "money keeps its value on a puller whose lc_monetary is $money_locale");
}

# A timestamptz primary key written under two TimeZones for one instant.
my $at = q{'2026-03-05 12:00:00+00'};
my $ny = $w->background_psql('postgres');
$ny->query_safe(q{SET timezone = 'America/New_York'});
$writer{A}{psql}->query_safe("INSERT INTO public.tz_pk VALUES ($at, 'tokyo')");
$ny->query_safe("UPDATE public.tz_pk SET v = 'new york' WHERE at = $at");
pull('tz_pk');
my $tz_rows = "SELECT string_agg(extract(epoch FROM at)::bigint || ':' || v, ',' ORDER BY at) FROM public.tz_pk";
is(cmp_sql($p, $tz_rows), '1772712000:new york',
	'a timestamptz key inserted under Asia/Tokyo and updated under America/New_York is one row on the puller');
is(sq($w, "SELECT count(DISTINCT row_hash) FROM replstamp.changes WHERE relation = 'public.tz_pk'"), '1',
	'the writer\'s change log gives that key one row identity whatever the TimeZone');
is(sq($p, "SELECT count(DISTINCT row_hash) FROM replstamp.changes WHERE relation = 'public.tz_pk'"), '1',
	'and so does the puller\'s');
# Last writer wins on that row: w changes it under New York time, then p
# changes it later under its own settings; when each has pulled the other,
# both hold p's value.
$ny->query_safe("UPDATE public.tz_pk SET v = 'w earlier' WHERE at = $at");
sq($p, "UPDATE public.tz_pk SET v = 'p later' WHERE at = $at");
pull('tz_pk, second round');
my ($rc, $out, $err) = $w->psql('postgres', "SELECT replstamp.sync('p')");
is($rc == 0 ? '' : $err, '', 'the writer applies the puller\'s change of that row without error');
is(cmp_sql($p, $tz_rows), '1772712000:p later', 'the later writer wins on the puller: one row, p\'s value');
is(cmp_sql($w, $tz_rows), '1772712000:p later', 'the later writer wins on the writer: one row, p\'s value');

# The change logs agree: as many changes of each table on both nodes, and
# each change held verbatim (key, image, time) by the node that pulled it.
my $log_counts = "SELECT string_agg(relation || ':' || n, ', ' ORDER BY relation) FROM "
  . "(SELECT relation, count(*) AS n FROM replstamp.changes WHERE replica_id = '$wid' GROUP BY relation) c";
is(sq($p, $log_counts), sq($w, $log_counts), 'the puller holds every change the writer stamped, table by table');
my $pid = sq($p, 'SELECT replica_id FROM replstamp.node');
for my $dir ([ $w, $p, $wid ], [ $p, $w, $pid ])
{
	my ($origin, $puller, $rid) = @$dir;
	my $held = sq($puller, "SELECT coalesce(string_agg(serial::text, ','), '') FROM replstamp.changes WHERE replica_id = '$rid'");
	my $change = "SELECT serial, concat_ws(' ', relation, op, pk, row_image, extract(epoch FROM changed_at)) "
	  . "FROM replstamp.changes WHERE replica_id = '$rid' AND serial = ANY ('{$held}')";
	my $digest = "SELECT count(*) || ' changes, md5 ' || md5(string_agg(c.text, E'\\n' ORDER BY c.serial)) FROM ($change) c(serial, text)";
	is(cmp_sql($puller, $digest), cmp_sql($origin, $digest),
		$puller->name . ' holds each change of ' . $origin->name . ' it pulled verbatim: key, image and time')
	  or show_differences('change', $change, $origin, $puller);
}

# 5(c): one canonical spelling of a relation.  A change of public.kc that
# names it Public."kc" is refused, and nothing of it is applied.
$writer{A}{psql}->query_safe("INSERT INTO public.kc VALUES (1, 'canonical')");
pull('kc');
is(sq($p, 'SELECT string_agg(v, \',\') FROM public.kc'), 'canonical', 'a change of public.kc is applied');
$writer{A}{psql}->query_safe("INSERT INTO public.kc VALUES (2, 'forged')");
my $forged = sq($w, "SELECT max(serial) FROM replstamp.changes WHERE relation = 'public.kc'");
sq($w, qq{ALTER TABLE replstamp.changes DISABLE TRIGGER USER;
	UPDATE replstamp.changes SET relation = 'Public."kc"' WHERE replica_id = '$wid' AND serial = $forged});
($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('w')");
isnt($rc, 0, 'a change naming its table Public."kc" instead of public.kc is refused');
is(sq($p, 'SELECT count(*) FROM public.kc WHERE k = 2'), '0', 'and its row is not applied');
is(sq($p, q{SELECT count(*) FROM replstamp.changes WHERE relation <> 'public.kc' AND relation ILIKE '%kc%'}), '0',
	'nor recorded under the other spelling');

$_->{psql}->quit for values %writer;
$ny->quit;
$_->stop for ($w, $p);
done_testing();
