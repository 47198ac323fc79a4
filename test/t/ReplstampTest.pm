# Helpers shared by replstamp's TAP tests.
#
# Copyright (c) 2026, the replstamp authors
package ReplstampTest;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

our @EXPORT = qw(replstamp_node require_programs pg_major add_peer add_mesh freeze_node snapshot_running start_verified use_install set_guc node_state wait_converged $TRACK_T psql_start);

# A started node with replstamp preloaded.  Options: init => { ... } for
# PostgreSQL::Test::Cluster::init, conf => [ lines ] for postgresql.conf,
# sql => statements to run in database postgres once it is up, install =>
# the installation to run (the parent of its bin and lib directories; by
# default the binaries on the PATH), template => 1 to copy a data directory
# initdb made once per script (and set of init options) instead of running
# initdb again: much faster, and the nodes share a system identifier, as a
# primary and its standbys do.  Unless defaults => 1, the node runs with
# replstamp.sync_interval = 0 (syncs only by hand) unless conf says otherwise.
my %templates;

# The schema most tests start from: the extension, and a table t tracked.
our $TRACK_T = q{
	CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, v text);
	SELECT replstamp.track('t');
};

sub replstamp_node
{
	my ($name, %opts) = @_;
	my @install = $opts{install} ? (install_path => $opts{install}) : ();
	my $node = PostgreSQL::Test::Cluster->new($name, @install);
	my %init = %{ $opts{init} // {} };
	if ($opts{template})
	{
		my $key = join(',', ($opts{install} // ''), map { "$_=$init{$_}" } sort keys %init);
		if (!$templates{$key})
		{
			my $t = PostgreSQL::Test::Cluster->new('template' . (1 + keys %templates), @install);
			$t->init(%init);
			$t->backup_fs_cold('initdb');
			$templates{$key} = $t;
		}
		$node->init_from_backup($templates{$key}, 'initdb');
	}
	else
	{
		$node->init(%init);
	}
	# Most tests sync by hand and count what each sync applied: no
	# background sync unless the test asks for one (defaults => 1 keeps
	# replstamp's own defaults).
	my @manual = $opts{defaults} ? () : ('replstamp.sync_interval = 0');
	$node->append_conf('postgresql.conf',
		join("\n", "shared_preload_libraries = 'replstamp'", @manual, @{ $opts{conf} // [] }) . "\n");
	$node->start;
	$node->safe_psql('postgres', $opts{sql}) if defined $opts{sql};
	return $node;
}

# The major release of the PostgreSQL under test (the pg_config first on
# the PATH), e.g. 17.
sub pg_major
{
	my $v = `pg_config --version`;
	return $v =~ /^PostgreSQL (\d+)/ ? $1 : 0;
}

# Skip the whole test, naming what is missing, unless the PostgreSQL under
# test has each of the programs @names in its own bin directory.  npm's
# trees of 17 and 18 (test/pg_major.sh) have no pg_basebackup,
# pg_verifybackup, pg_dump, ...; another major's program found on the PATH
# (Debian's /usr/bin wrappers run 15's) refuses a newer server or reads
# its files wrongly, so only the tree's own counts.
sub require_programs
{
	my (@names) = @_;
	my $bindir = `pg_config --bindir`;
	chomp $bindir;
	my @missing = grep { !-x "$bindir/$_" } @names;
	plan skip_all => 'PostgreSQL ' . pg_major() . ' here has no ' . join(', ', @missing)
	  . " (not in $bindir)"
	  if @missing;
	return;
}

# $node pulls from $peer, which it calls $name.
sub add_peer
{
	my ($node, $name, $peer) = @_;
	$node->safe_psql('postgres',
		"SELECT replstamp.add_peer('$name', \$\$" . $peer->connstr('postgres') . "\$\$)");
	return;
}

# Every node of @nodes pulls from every other, calling it by its name.
sub add_mesh
{
	my @nodes = @_;
	for my $x (@nodes)
	{
		add_peer($x, $_->name, $_) for grep { $_ != $x } @nodes;
	}
	return;
}

# Freeze the postmaster of a running server and every child of it
# (SIGSTOP); returns their PIDs, for kill 'CONT'.
sub freeze_node
{
	my ($node) = @_;
	open(my $fh, '<', $node->data_dir . '/postmaster.pid') or die "no postmaster.pid: $!";
	my $pid = <$fh>;
	close $fh;
	chomp $pid;
	kill 'STOP', $pid;
	my @children;
	for my $stat (glob '/proc/[0-9]*/stat')
	{
		open(my $s, '<', $stat) or next;
		my $line = <$s>;
		close $s;
		next unless defined $line && $line =~ /^(\d+) \(.*\) \S (\d+) /;
		push @children, $1 if $2 == $pid;
	}
	kill 'STOP', @children;
	return ($pid, @children);
}

# Freeze every process of a running server, copy its data directory, let
# it go on: what a snapshot of a running VM holds.
sub snapshot_running
{
	my ($node, $to) = @_;
	my @frozen = freeze_node($node);
	my $ok = system('cp', '-a', $node->data_dir, $to) == 0;
	kill 'CONT', @frozen;
	die 'cp failed' unless $ok;
	unlink "$to/postmaster.pid";
	return;
}

# Run $sql on $node's postgres database with psql in the background, its
# output and errors into the scalar $out refers to; ->finish waits for it.
sub psql_start
{
	my ($node, $sql, $out) = @_;
	return IPC::Run::start(
		[ 'psql', '-X', '-At', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', $out, '2>', $out, IPC::Run::timeout(300));
}

# Run $action (a start, restart, ...) on $node, then wait until this start
# has verified the identity of each database in @dbs (default: postgres).
# Only log lines written after $action began count: an earlier start's
# lines must not satisfy the wait.
sub start_verified
{
	my ($node, $action, @dbs) = @_;
	my $offset = -s $node->logfile // 0;
	$action->();
	$node->wait_for_log(qr/identity of database "$_" verified/, $offset)
	  for (@dbs ? @dbs : ('postgres'));
	return;
}

# From the next start on, $node runs the installation $install (the parent
# of its bin and lib directories; undef: the binaries on the PATH), on the
# same data directory: what "replace the binaries" does to a real server.
# Stop the node first.  PostgreSQL::Test::Cluster takes the installation
# only in new(); every command it runs afterwards reads this field.
sub use_install
{
	my ($node, $install) = @_;
	die "node \"" . $node->name . "\" is running" if defined $node->{_pid};
	if (defined $install)
	{
		$node->{_install_path} = $install;
	}
	else
	{
		delete $node->{_install_path};
	}
	return;
}

# ALTER SYSTEM SET $guc = $value on $node, and reload.
sub set_guc
{
	my ($node, $guc, $value) = @_;
	$node->safe_psql('postgres', "ALTER SYSTEM SET $guc = '$value'");
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
	return;
}

# What every node must end with: the rows of each table in @tables and the
# stamps of the change log, each as a count and a checksum.
sub node_state
{
	my ($node, @tables) = @_;
	my @parts = map {
		"(SELECT '$_ ' || count(*) || ':' || md5(coalesce(string_agg(r::text, ',' ORDER BY r::text), '')) FROM $_ r)"
	} @tables;
	push @parts,
	  "(SELECT 'changes ' || count(*) || ':' || md5(coalesce(string_agg(replica_id || '/' || serial, ',' "
	  . "ORDER BY replica_id, serial), '')) FROM replstamp.changes)";
	return $node->safe_psql('postgres', 'SELECT ' . join(" || ' ' || ", @parts));
}

# Poll (the sync workers pull meanwhile) until every node of @$nodes holds
# the same rows of @$tables and the same change-log stamps, then assert it
# for each node against the first.  Returns the common state.
sub wait_converged
{
	my ($nodes, $tables, $what) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	my @states;
	for (;;)
	{
		@states = map { node_state($_, @$tables) } @$nodes;
		last if !grep { $_ ne $states[0] } @states;
		last if time > $deadline;
		usleep(100_000);
	}
	is($states[$_], $states[0],
		"$what: " . $nodes->[$_]->name . ' and ' . $nodes->[0]->name
		  . ' hold the same rows and the same change-log stamps')
	  for (1 .. $#$nodes);
	return $states[0];
}

1;
