# Helpers shared by replstamp's TAP tests.
#
# Copyright (c) 2026, the replstamp authors
package ReplstampTest;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(replstamp_node add_peer start_verified use_install);

# A started node with replstamp preloaded.  Options: init => { ... } for
# PostgreSQL::Test::Cluster::init, conf => [ lines ] for postgresql.conf,
# sql => statements to run in database postgres once it is up, install =>
# the installation to run (the parent of its bin and lib directories; by
# default the binaries on the PATH).
sub replstamp_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name,
		$opts{install} ? (install_path => $opts{install}) : ());
	$node->init(%{ $opts{init} // {} });
	$node->append_conf('postgresql.conf',
		join("\n", "shared_preload_libraries = 'replstamp'", @{ $opts{conf} // [] }) . "\n");
	$node->start;
	$node->safe_psql('postgres', $opts{sql}) if defined $opts{sql};
	return $node;
}

# $node pulls from $peer, which it calls $name.
sub add_peer
{
	my ($node, $name, $peer) = @_;
	$node->safe_psql('postgres',
		"SELECT replstamp.add_peer('$name', \$\$" . $peer->connstr('postgres') . "\$\$)");
	return;
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

1;
