# A randomized fault test (issue 23, item 4): three nodes in a full mesh,
# sync workers every second, pruning every 5 s, writers on every node over a
# small hot key space (table kv: upserts, deletes, multi-key transactions,
# rolled-back transactions; each transaction also inserts a row of its own
# into table ins, which nothing overwrites), random manual syncs, and at random points between write
# rounds one of these faults on a random node:
#
#   crash      an immediate stop and a start (crash recovery)
#   backup     CALL replstamp.backup(dir), kept for a later restore
#   restore    the node replaced by its last backup (the data directory put
#              back from the backup; the copy rotates at start)
#   rollback   a VM-snapshot rollback: a copy of the data directory (cold:
#              stop, copy, start; or hot: every process frozen while it is
#              copied, as 054 does), the node writes and its peers pull
#              that, then the copy is put back (no mark: its peers' history
#              checks must catch it)
#   failover   a streaming standby of the node, the node writes, the standby
#              catches up, the node dies, the standby is promoted in its
#              place and the other nodes are repointed to it
#   prune      replstamp.prune() by hand
#
# Each kind comes up once per shuffled deck, so every run of more than a
# few rounds has each of them.  At the end the faults and writers stop,
# every node syncs until quiet, and the test asserts: the three nodes hold
# identical rows; every key holds the acknowledged write with the latest
# stamp time (a client-side journal of every acknowledged write; writes of
# one key within 1 ms of each other count as a tie, either may win), so no
# acknowledged write was lost; every node holds the ins row of every
# acknowledged transaction (a lost write on the hot keys is often hidden by
# a later write of its key; the ins rows never are); no write of a
# rolled-back transaction appears; no process crashed; no node was refused
# as too far behind.
#
# Writes a rollback legitimately loses are not counted: before a restore,
# a rollback or a failover's kill, the test waits until every running node
# holds the same vector (so both peers hold everything the node stamped,
# up to its lowest uncommitted serial), and the failover waits until the
# standby replayed everything the node wrote.  The tombstone lifetime (1h)
# is longer than any run, so no node is ever legitimately refused.
#
# Environment:
#   REPLSTAMP_CHAOS_SEED=N      replay a run (the action sequence is a
#                               function of the seed; timing still varies);
#                               the seed is printed in the first test name
#   REPLSTAMP_CHAOS_SECONDS=N   length of the chaos phase (default 120)
#   REPLSTAMP_CHAOS_BREAK=x,y   negative control: switch off settings the
#                               guarantees depend on, on every node:
#                               check_histories, rotate_on_restore,
#                               reissue_on_rotation.  The test must then fail:
#                               with check_histories off the rolled-back
#                               nodes are not caught, and the ins rows of
#                               the writes they made after the rollback or
#                               lost with it are missing on some nodes
#                               (REPLSTAMP_CHAOS_SEED=7: 7 failures).
use strict;
use warnings;
use File::Path qw(rmtree);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use IPC::Run;
use ReplstampTest;
require_programs('pg_basebackup');

my $seed = $ENV{REPLSTAMP_CHAOS_SEED} // (time() * 1000 % 1_000_000_007);
$seed = int($seed);
my $seconds = $ENV{REPLSTAMP_CHAOS_SECONDS} // 120;
my @break = grep { $_ ne '' } split /,/, ($ENV{REPLSTAMP_CHAOS_BREAK} // '');
for (@break)
{
	die "REPLSTAMP_CHAOS_BREAK: unknown setting \"$_\""
	  unless /^(check_histories|rotate_on_restore|reissue_on_rotation)$/;
}
srand($seed);
note("REPLSTAMP_CHAOS_SEED=$seed REPLSTAMP_CHAOS_SECONDS=$seconds"
	  . (@break ? ' REPLSTAMP_CHAOS_BREAK=' . join(',', @break) : ''));
ok(1, "chaos run with REPLSTAMP_CHAOS_SEED=$seed for $seconds s"
	  . (@break ? ' (broken on purpose: ' . join(',', @break) . ' off)' : ''));

my $KEYS = 16;
my $TIE = 0.001;    # seconds: writes of a key closer than this are a tie
my $tmp = $PostgreSQL::Test::Utils::tmp_check;

my $schema = q{CREATE EXTENSION replstamp;
	CREATE TABLE kv (k int PRIMARY KEY, v bigint NOT NULL, at timestamptz NOT NULL);
	SELECT replstamp.track('kv');
	CREATE TABLE ins (g bigint PRIMARY KEY, node text NOT NULL);
	SELECT replstamp.track('ins');};
my @conf = ('replstamp.prune_interval = 5', "replstamp.tombstone_lifetime = '1h'",
	map { "replstamp.$_ = off" } @break);

# The three slots; a failover puts another cluster into a slot.  Peers are
# named after the slot.
my @names = qw(a b c);
my %node;
my @all_clusters;    # every cluster ever run, for the log checks
for my $n (@names)
{
	$node{$n} = replstamp_node($n, template => 1, init => { allows_streaming => 1 },
		conf => \@conf, sql => $schema);
	push @all_clusters, $node{$n};
}
add_mesh(map { $node{$_} } @names);
# Once the extension exists (a sync worker that finds none waits a minute).
set_guc($node{$_}, 'replstamp.sync_interval', 1) for @names;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

# Every node pulls from the cluster now in each peer's slot.
sub repoint
{
	for my $x (@names)
	{
		for my $p (grep { $_ ne $x } @names)
		{
			my $conn = $node{$p}->connstr('postgres');
			sq($node{$x}, "UPDATE replstamp.peer SET conninfo = \$\$$conn\$\$ "
				  . "WHERE name = '$p' AND conninfo <> \$\$$conn\$\$");
		}
	}
	return;
}

# The journal.  $journal{token} = { k, del, at, node, state } where state
# is 'ok' (acknowledged), 'aborted' (a ROLLBACK the test asked for) or
# 'unknown' (its transaction failed: not acknowledged, never expected).
my %journal;
my @acked;    # acknowledged writes, in order of acknowledgement
my $token = 0;
my $group = 0;
my %group_state;    # every transaction: 'ok', 'aborted' or 'unknown'
my %group_node;     # and the node it ran on
my %count;

# One burst of writes for one node: SQL for psql -f, and the groups it holds.
sub burst
{
	my ($n) = @_;
	my ($sql, %groups) = ('');
	my $ops = 2 + int(rand(5));
	for (1 .. $ops)
	{
		my $g = ++$group;
		my $r = rand();
		my $keys = $r < 0.7 ? 1 : 2 + int(rand(3));
		my $abort = $r > 0.95;
		my @stmts = ("INSERT INTO ins VALUES ($g, '$n');");
		my @tokens;
		for (1 .. $keys)
		{
			my $k = 1 + int(rand($KEYS));
			if (rand() < 0.2)
			{
				push @stmts, "DELETE FROM kv WHERE k = $k RETURNING 'W|$g|' || k || '|D|' "
				  . "|| extract(epoch FROM clock_timestamp());";
			}
			else
			{
				my $t = ++$token;
				push @tokens, $t;
				push @stmts, "INSERT INTO kv VALUES ($k, $t, clock_timestamp()) ON CONFLICT (k) DO UPDATE "
				  . "SET v = excluded.v, at = excluded.at RETURNING 'W|$g|' || k || '|' || v || '|' "
				  . "|| extract(epoch FROM at);";
			}
		}
		$sql .= "BEGIN;\n" . join("\n", @stmts) . "\n"
		  . ($abort ? "ROLLBACK;\n" : "COMMIT;\nSELECT 'C|$g';\n");
		$groups{$g} = { abort => $abort, tokens => \@tokens };
	}
	return ($sql, \%groups);
}

# Run one burst on each node of @$which at once, and journal what they did.
sub write_round
{
	my ($which) = @_;
	my %run;
	for my $n (@$which)
	{
		my ($sql, $groups) = burst($n);
		my ($out, $err) = ('', '');
		my $h = IPC::Run::start(
			[ 'psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-d', $node{$n}->connstr('postgres'), '-f', '-' ],
			'<', \$sql, '>', \$out, '2>', \$err, IPC::Run::timeout(180));
		$run{$n} = [ $h, \$out, \$err, $groups ];
	}
	for my $n (@$which)
	{
		my ($h, $out, $err, $groups) = @{ $run{$n} };
		eval { $h->finish; };
		my %w;
		my %committed;
		for my $line (split /\n/, $$out)
		{
			if ($line =~ /^W\|(\d+)\|(\d+)\|(D|\d+)\|([0-9.]+)$/)
			{
				push @{ $w{$1} }, { k => $2, tok => $3, at => $4 };
			}
			elsif ($line =~ /^C\|(\d+)$/)
			{
				$committed{$1} = 1;
			}
		}
		for my $g (sort { $a <=> $b } keys %$groups)
		{
			my $state = $groups->{$g}{abort} ? 'aborted' : $committed{$g} ? 'ok' : 'unknown';
			$count{"groups $state"}++;
			if ($state eq 'unknown')
			{
				diag("write on $n not acknowledged: $$err") unless $count{"warned $n $g"}++;
			}
			$journal{$_} //= { state => $state, node => $n } for @{ $groups->{$g}{tokens} };
			$group_state{$g} = $state;
			$group_node{$g} = $n;
			next unless $state eq 'ok';
			for my $wr (@{ $w{$g} // [] })
			{
				my $e = { k => $wr->{k}, del => $wr->{tok} eq 'D', at => $wr->{at}, node => $n,
					tok => $wr->{tok} };
				$journal{ $wr->{tok} } = { %$e, state => 'ok' } unless $e->{del};
				push @acked, $e;
			}
		}
	}
	return;
}

# The vectors of the nodes, compared: the replica IDs every node lists (a
# retired ID leaves a node's vector once none of its changes is left there
# and every puller holds all of it, on each node in its own time) must have
# the same serial everywhere, and every node's current ID must be among
# them.  Returns '' when they agree, else a description.
sub vectors_differ
{
	my (%v, %seen);
	for my $n (@names)
	{
		my $cur = sq($node{$n}, 'SELECT replica_id FROM replstamp.node');
		$seen{$cur} = 0;
		for (split /\n/, sq($node{$n}, "SELECT replica_id || ' ' || serial FROM replstamp.vector"))
		{
			my ($id, $s) = split / /;
			$v{$n}{$id} = $s;
		}
	}
	my @ids = grep { my $id = $_; !grep { !exists $v{$_}{$id} } @names } keys %{ $v{ $names[0] } };
	my %common = map { $_ => 1 } @ids;
	my @why;
	push @why, "current ID $_ is missing from a vector" for grep { !$common{$_} } sort keys %seen;
	for my $id (sort @ids)
	{
		my @s = map { $v{$_}{$id} } @names;
		push @why, "$id: " . join(' ', map { "$names[$_]=$s[$_]" } 0 .. $#names) if grep { $_ != $s[0] } @s;
	}
	return join("\n", @why);
}

# Wait until every node holds the same vector: nothing any node stamped or
# pulled is held by it alone.  Writers are paused meanwhile.
my $quiesce_failed = 0;
sub quiesce
{
	my ($why) = @_;
	my $deadline = time + 120;
	my $same = 0;
	my $diff;
	while (time < $deadline)
	{
		$diff = vectors_differ();
		if ($diff eq '')
		{
			return 1 if ++$same >= 2;
		}
		else
		{
			$same = 0;
		}
		usleep(200_000);
	}
	$quiesce_failed++;
	diag("the nodes did not reach the same vector before $why:\n$diff");
	return 0;
}

sub put_back
{
	my ($n, $from) = @_;
	my $dir = $node{$n}->data_dir;
	rmtree($dir);
	system('cp', '-a', $from, $dir) == 0 or die "cp $from $dir failed";
	chmod 0700, $dir;
	unlink "$dir/postmaster.pid";
	return;
}

my %backup;    # slot => backup directory not restored yet
my $faults = 0;

sub fault
{
	my ($kind, $n) = @_;
	my $cl = $node{$n};
	my $f = ++$faults;
	note(sprintf('%.1f s: fault %d: %s on %s', time - $^T, $f, $kind, $n));
	$count{"fault $kind"}++;
	if ($kind eq 'crash')
	{
		$cl->stop('immediate');
		start_verified($cl, sub { $cl->start });
	}
	elsif ($kind eq 'backup')
	{
		rmtree($backup{$n}) if $backup{$n};
		my $dir = "$tmp/chaos_backup_$f";
		sq($cl, "CALL replstamp.backup('$dir')");
		$backup{$n} = $dir;
	}
	elsif ($kind eq 'restore')
	{
		if (!$backup{$n})
		{
			fault('backup', $n);
			write_round([@names]);
		}
		quiesce("restoring $n");
		$cl->stop(rand() < 0.5 ? 'immediate' : 'fast');
		put_back($n, $backup{$n});
		rmtree(delete $backup{$n});
		start_verified($cl, sub { $cl->start });
		repoint();
	}
	elsif ($kind eq 'rollback')
	{
		my $snap = "$tmp/chaos_snapshot_$f";
		if (rand() < 0.5)
		{
			$count{'rollback cold'}++;
			$cl->stop;
			system('cp', '-a', $cl->data_dir, $snap) == 0 or die 'cp failed';
			start_verified($cl, sub { $cl->start });
		}
		else
		{
			$count{'rollback hot'}++;
			snapshot_running($cl, $snap);
		}
		write_round([$n]) for 1 .. 1 + int(rand(3));
		write_round([@names]);
		quiesce("rolling $n back");
		$cl->stop('immediate');
		put_back($n, $snap);
		rmtree($snap);
		start_verified($cl, sub { $cl->start });
		repoint();
	}
	elsif ($kind eq 'failover')
	{
		$cl->backup("standby_$f");
		my $s = PostgreSQL::Test::Cluster->new("${n}_promoted_$f");
		$s->init_from_backup($cl, "standby_$f", has_streaming => 1);
		$s->start;
		push @all_clusters, $s;
		write_round([@names]) for 1 .. 1 + int(rand(3));
		$cl->wait_for_catchup($s);
		$cl->stop('immediate');
		start_verified($s, sub { $s->promote });
		$node{$n} = $s;
		# A backup of the old primary carries its port: not restored here.
		rmtree(delete $backup{$n}) if $backup{$n};
		repoint();
		rmtree($cl->backup_dir . "/standby_$f");
	}
	elsif ($kind eq 'prune')
	{
		sq($cl, 'SELECT replstamp.prune()');
	}
	return;
}

# The chaos.
my @kinds = qw(crash backup restore rollback failover prune);
my @deck;
my $end = time + $seconds;
my $rounds = 0;
while (time < $end)
{
	$rounds++;
	write_round([@names]);
	if (rand() < 0.3)
	{
		my $n = $names[ int(rand(@names)) ];
		$node{$n}->psql('postgres', 'SELECT replstamp.sync_all()');
		$count{'manual syncs'}++;
	}
	if (rand() < 0.15)
	{
		if (!@deck)
		{
			@deck = @kinds;
			for (my $i = $#deck; $i > 0; $i--)
			{
				my $j = int(rand($i + 1));
				@deck[ $i, $j ] = @deck[ $j, $i ];
			}
		}
		fault(shift @deck, $names[ int(rand(@names)) ]);
	}
}
note("$rounds write rounds, $faults faults, " . scalar(@acked) . ' acknowledged writes');
note("$_: $count{$_}") for grep { !/^warned/ } sort keys %count;

# Sync until quiet: the rows and the vectors the same on every node, three
# polls in a row.
sub rows
{
	my ($n) = @_;
	return sq($node{$n}, "SELECT coalesce(string_agg(k || '=' || v, ' ' ORDER BY k), '') FROM kv");
}
sub inserted
{
	my ($n) = @_;
	return sq($node{$n}, "SELECT coalesce(string_agg(g::text, ' ' ORDER BY g), '') FROM ins");
}
my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
my $quiet = 0;
while (time < $deadline)
{
	my @r = map { rows($_) . ' / ' . inserted($_) } @names;
	$quiet = (!grep { $_ ne $r[0] } @r) && vectors_differ() eq '' ? $quiet + 1 : 0;
	last if $quiet >= 3;
	sleep 1;
}
diag('still different: ' . (vectors_differ() || 'the rows')) if $quiet < 3;
ok($quiet >= 3, "after the chaos the nodes sync until quiet: same rows and same vector everywhere (seed $seed)");

my %final = map { $_ => rows($_) } @names;
my %final_ins = map { $_ => inserted($_) } @names;
for (qw(b c))
{
	is($final{$_}, $final{a}, "node $_ holds exactly the kv rows node a holds (seed $seed)");
	is($final_ins{$_}, $final_ins{a}, "node $_ holds exactly the ins rows node a holds (seed $seed)");
}

# And verify, from the digests kept with each row's version, names no row
# that differs between any two nodes (issue 23).
for my $n (@names)
{
	for my $peer (grep { $_ ne $n } @names)
	{
		my $diff = sq($node{$n}, "SELECT count(*) || coalesce(': ' || string_agg(difference || ' ' || relation || pk::text, ', '), '') FROM replstamp.verify('$peer')");
		is($diff, '0', "verify on $n against $peer finds no row that differs (seed $seed)");
	}
}

# Every transaction inserted a row of its own into ins, which nothing
# overwrites: the row of each acknowledged one must be on every node, and
# none of a rolled-back one.
for my $n (@names)
{
	my %has = map { $_ => 1 } split / /, $final_ins{$n};
	my @missing = map { "$_\@$group_node{$_}" }
	  grep { $group_state{$_} eq 'ok' && !$has{$_} } sort { $a <=> $b } keys %group_state;
	my @aborted = grep { $group_state{$_} eq 'aborted' && $has{$_} } sort { $a <=> $b } keys %group_state;
	is(@missing . ' missing' . (@missing ? ': ' . join(' ', @missing[ 0 .. ($#missing > 30 ? 30 : $#missing) ]) : ''),
		'0 missing', "node $n holds the ins row of every acknowledged transaction: none lost (seed $seed)");
	is(@aborted . ' present' . (@aborted ? ': ' . join(' ', @aborted) : ''),
		'0 present', "node $n holds no ins row of a rolled-back transaction (seed $seed)");
}

# The journal's verdict, against each node's rows.
my %winner;    # k => [ candidate writes within $TIE of the latest ]
my %latest;
for my $w (@acked)
{
	$latest{ $w->{k} } = $w->{at} if !defined $latest{ $w->{k} } || $w->{at} > $latest{ $w->{k} };
}
for my $w (@acked)
{
	push @{ $winner{ $w->{k} } }, $w if $w->{at} >= $latest{ $w->{k} } - $TIE;
}
for my $n (@names)
{
	my %row = map { split /=/ } split / /, $final{$n};
	my (@lost, @aborted);
	for my $k (1 .. $KEYS)
	{
		my $got = $row{$k};
		if (defined $got && $journal{$got} && $journal{$got}{state} eq 'aborted')
		{
			push @aborted, "key $k holds $got, written by a rolled-back transaction on $journal{$got}{node}";
		}
		my $cands = $winner{$k};
		if (!$cands)
		{
			push @lost, "key $k holds $got but no write of it was acknowledged" if defined $got;
			next;
		}
		next if grep { $_->{del} ? !defined $got : (defined $got && $got eq $_->{tok}) } @$cands;
		# A transaction whose outcome the client never learned may have won.
		next if defined $got && $journal{$got} && $journal{$got}{state} eq 'unknown';
		my $want = join(' or ', map { ($_->{del} ? 'deleted' : "token $_->{tok}") . " (on $_->{node} at $_->{at})" } @$cands);
		my $have = !defined $got ? 'no row' : $journal{$got} && $journal{$got}{at}
		  ? "token $got (on $journal{$got}{node} at $journal{$got}{at})" : "token $got";
		push @lost, "key $k: expected $want, holds $have";
	}
	is(join("\n", @lost), '',
		"node $n: every key holds its latest acknowledged write: no acknowledged write lost (seed $seed)");
	is(join("\n", @aborted), '', "node $n: no write of a rolled-back transaction appears (seed $seed)");
}

is($quiesce_failed, 0, "before every rollback the peers came to hold everything the node had (seed $seed)");
for my $cl (@all_clusters)
{
	ok(!$cl->log_contains(qr/terminated by signal/), $cl->name . ': no process crashed');
	ok(!$cl->log_contains(qr/too far behind/), $cl->name . ': no node was refused as too far behind');
}

$node{$_}->stop for @names;
done_testing();
