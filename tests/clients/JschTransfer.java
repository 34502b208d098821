// A partner's Java system as many banks run it: JSch (0.1.5x) with a password, uploading a
// file and reading it back. Used by wharf's client-matrix tests.
// Usage: java -cp jsch.jar:. JschTransfer HOST PORT USER LOCAL REMOTE DOWNLOADED
// The password comes from the environment (WHARF_TEST_PASSWORD), never the command line.
import com.jcraft.jsch.ChannelSftp;
import com.jcraft.jsch.JSch;
import com.jcraft.jsch.Session;

public class JschTransfer {
    public static void main(String[] args) throws Exception {
        JSch jsch = new JSch();
        Session session = jsch.getSession(args[2], args[0], Integer.parseInt(args[1]));
        session.setPassword(System.getenv("WHARF_TEST_PASSWORD"));
        session.setConfig("StrictHostKeyChecking", "no");
        session.connect(20000);
        System.out.println("hostkey " + session.getHostKey().getType());
        ChannelSftp sftp = (ChannelSftp) session.openChannel("sftp");
        sftp.connect(20000);
        sftp.put(args[3], args[4]);
        sftp.get(args[4], args[5]);
        System.out.println("size " + sftp.stat(args[4]).getSize());
        sftp.disconnect();
        session.disconnect();
    }
}
